"""The shared metrics: histogram buckets that reach what they measure, and the served model
versions as one series per model, replaced on a reload."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from prometheus_client import Histogram

from services.common import metrics
from services.common.queue import QueueSettings


def finite_bounds(histogram: Histogram) -> list[float]:
    return [bound for bound in histogram._upper_bounds if bound != float("inf")]


def test_job_histograms_reach_past_the_job_time_limit() -> None:
    limit = QueueSettings().task_time_limit_seconds
    for histogram in (metrics.JOB_SECONDS, metrics.JOB_QUEUE_SECONDS):
        bounds = finite_bounds(histogram)
        # A job stopped at the limit lands in a finite bucket, and the limit is a bound.
        assert limit in bounds and max(bounds) > limit, histogram
        assert 60.0 in bounds  # BoigGenerationQueueWaitLong reads le="60.0"
    # Requests keep their buckets: minutes would be an outage there, not a slow request.
    assert max(finite_bounds(metrics.HTTP_LATENCY)) == 60.0


def served(service: str, model: str) -> list[tuple[str, str]]:
    return [
        (sample.labels["name"], sample.labels["version"])
        for family in metrics.REGISTRY.collect()
        if family.name == "boig_checkpoint_info"
        for sample in family.samples
        if sample.labels["service"] == service and sample.labels["model"] == model
        if sample.value == 1
    ]


def test_a_reload_replaces_the_served_version_and_its_load_time() -> None:
    metrics.record_model_load("svc-a", "llm", name="base", version="v1", seconds=2.5)
    metrics.record_model_load("svc-a", "detector", name="yolo", version="sha256:1", seconds=0.5)
    assert served("svc-a", "llm") == [("base", "v1")]
    metrics.record_model_load("svc-a", "llm", name="base", version="v2", seconds=1.5)
    assert served("svc-a", "llm") == [("base", "v2")]
    assert served("svc-a", "detector") == [("yolo", "sha256:1")]  # another model, untouched
    load = metrics.REGISTRY.get_sample_value(
        "boig_model_load_seconds", {"service": "svc-a", "model": "llm"}
    )
    assert load == 1.5
    # The same version again (a LoRA reloaded after other work) stays one series.
    metrics.record_model_load("svc-a", "llm", name="base", version="v2", seconds=1.0)
    assert served("svc-a", "llm") == [("base", "v2")]
    metrics.record_model_unloaded("svc-a", "llm")
    assert served("svc-a", "llm") == []
    metrics.record_model_unloaded("svc-a", "llm")  # nothing left to remove: no error
    metrics.record_model_unloaded("svc-a", "detector")


def test_a_worker_whose_metrics_port_is_taken_asks_itself_to_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Celery swallows what a worker_ready handler raises: without the signal the worker would
    # run jobs while its /metrics was another process's.
    signals: list[tuple[int, int]] = []
    monkeypatch.setattr(metrics.os, "kill", lambda pid, sig: signals.append((pid, sig)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics.serve_worker_metrics("generator", taken.getsockname()[1], "127.0.0.1")
    assert signals == [(os.getpid(), signal.SIGTERM)]
