"""The Grafana dashboards against the running local stack: after a little traffic (a score, a
refused login, a generation job), every series and label a panel queries is on the /metrics of
the process that fills it; the training worker runs beside the stack for its gauges.

What no local process can export is named in STATIC_ONLY, with the reason; the unit test
tests/unit/tooling/test_grafana_dashboards.py checks those names against the source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services.common.processes import stop_process
from services.demo.__main__ import SAMPLES, create_api_key
from services.tooling.models import prepare_all
from services.tooling.stack import LocalStack, free_port, local_stack
from tests.e2e.jobs import run_generation_job
from tests.metric_names import (
    TARGET_LABELS,
    dashboard_queries,
    label_values_query,
    load_dashboards,
    selector_matchers,
)

pytestmark = pytest.mark.e2e

# Series no process of the local stack exports, and why.
STATIC_ONLY = {
    "up": "Prometheus makes it per scrape target; no process serves it",
    "vllm:": "vLLM runs on the GPU host only; the local describer uses the transformers backend",
    "boig_verbalization_repairs_total": "counted only when the model writes an unparsable "
    "description, which structured decoding prevents",
    "boig_model_work_dropped_total": "counted only when every caller of a model computation "
    "goes away before it ends",
}
# Where a series is filled. The services share one registry, so every process also exports
# the unlabelled ones (at 0): those are looked for on the process that sets them.
OWNERS = {
    "boig_generation_jobs_total": "gateway",
    "boig_rate_limited_total": "gateway",
    "boig_reward_value": "scorer",
    "boig_generation_job_seconds": "generator",
    "boig_generation_queue_wait_seconds": "generator",
    "boig_generation_queued_jobs": "generator",
    "boig_generation_oldest_queued_job_age_seconds": "generator",
    "boig_generation_served_reward": "generator",
    "boig_trainer_": "trainer",
}
HTTP_SERVICES = {"gateway", "scorer", "describer", "featurizer"}
UPSTREAM_CALLERS = ("GATEWAY", "SCORER", "GENERATOR")


def _reason_static(name: str) -> str | None:
    return next((why for prefix, why in STATIC_ONLY.items() if name.startswith(prefix)), None)


def _owner(name: str) -> str | None:
    owners = [prefix for prefix in OWNERS if name.startswith(prefix)]
    return OWNERS[max(owners, key=len)] if owners else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    models = prepare_all(world_sd=False, log=False)
    run_dir = tmp_path_factory.mktemp("stack")
    (run_dir / "registry").mkdir()
    environment = {
        "BOIG_GENERATOR_MODEL_PATH": str(models["tiny-diffusion"]),
        # A registry with nothing published: the describer serves its base model and says so
        # in boig_checkpoint_published_timestamp_seconds (0).
        "BOIG_DESCRIBER_CHECKPOINT_REGISTRY": str(run_dir / "registry"),
        # The second failed login a minute from one address is refused: a rate-limit series.
        "BOIG_GATEWAY_AUTH_FAILURE_LIMIT": "1/minute",
        # Five processes share a small machine, maybe with other work: one OpenMP thread each
        # (two spinning per process made every step far slower), and patient hops.
        "OMP_NUM_THREADS": "1",
        **{f"BOIG_{hop}_UPSTREAM_TIMEOUT_SECONDS": "600" for hop in UPSTREAM_CALLERS},
    }
    with local_stack(run_dir, extra_env=environment) as running:
        yield running


@pytest.fixture(scope="module")
def trainer_url(stack: LocalStack) -> Iterator[str]:
    """The training worker (compose profile `train`) on the stack's queue and database."""
    port = free_port()
    environment = {
        **os.environ,
        **stack.environment(),
        "PYTHONUNBUFFERED": "1",
        "BOIG_TRAINER_METRICS_PORT": str(port),
        "BOIG_TRAINER_DATABASE_URL": stack.database_url,
        "BOIG_TRAINER_REGISTRY": str(stack.run_dir / "registry"),
        "BOIG_TRAINER_RUNS_ROOT": str(stack.run_dir / "runs"),
        "OMP_NUM_THREADS": "1",
    }
    log_path = stack.run_dir / "trainer.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.trainer"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{url}/metrics", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield url
    finally:
        stop_process(process, grace=15)


@pytest.fixture(scope="module")
def scraped(stack: LocalStack, request: pytest.FixtureRequest) -> dict[str, list[Sample]]:
    """Every process's samples, after the traffic the dashboards are about."""
    gateway = stack.url("gateway")
    headers = {"Authorization": f"Bearer {create_api_key(stack.database_url)}"}
    body = json.loads((SAMPLES / "request.json").read_text())
    creative = sorted(SAMPLES.glob("*.*g"))[0]
    files = [("creatives", (creative.name, creative.read_bytes(), "image/*"))]
    scored = httpx.post(
        f"{gateway}/v1/score",
        headers=headers,
        data={"request": json.dumps(body)},
        files=files,
        timeout=600,
    )
    assert scored.status_code == 200, scored.text + stack.log("describer")[-2000:]
    # No key twice from one address: 401, then 429 from the failed-login limit (1/minute).
    refused = [
        httpx.post(f"{gateway}/v1/score", files=files, timeout=30).status_code for _ in range(2)
    ]
    assert refused == [401, 429]
    job = {
        "context": body["context"],
        "target": body["target"],
        "strategy": "best_of_n",
        "count": 1,
        "candidates": 2,
        "steps": 2,
        "seed": 1,
    }
    run_generation_job(gateway, headers, job, timeout=600)

    # Started now, not beside the traffic: its torch import would slow the models down.
    trainer_url = request.getfixturevalue("trainer_url")
    urls = {name: stack.url(name) for name in stack.processes} | {"trainer": trainer_url}
    return {
        name: [
            sample
            for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
            for sample in family.samples
        ]
        for name, url in urls.items()
    }


def test_every_series_a_dashboard_queries_is_on_the_live_stack(
    scraped: dict[str, list[Sample]],
) -> None:
    problems, static = [], set()
    for dashboard in load_dashboards().values():
        for where, expr in dashboard_queries(dashboard):
            for name, matchers in selector_matchers(expr):
                if _reason_static(name):
                    static.add(name)
                    continue
                owner = _owner(name)
                places = [owner] if owner else list(scraped)
                samples = [s for place in places for s in scraped[place] if s.name == name]
                # Label values a panel names outright must occur; Grafana variables and
                # regular expressions filter, and may match nothing on a quiet stack.
                for matcher in matchers:
                    if matcher.label in TARGET_LABELS:
                        continue
                    samples = [s for s in samples if matcher.label in s.labels]
                    if matcher.op == "=" and "$" not in matcher.value:
                        samples = [s for s in samples if s.labels[matcher.label] == matcher.value]
                if not samples:
                    wanted = ", ".join(f"{m.label}{m.op}{m.value!r}" for m in matchers)
                    problems.append(f"{where}: no {name}{{{wanted}}} on {'/'.join(places)}")
    assert problems == []
    # The exceptions are still in use (or the list would hide a new one).
    assert {next(p for p in STATIC_ONLY if n.startswith(p)) for n in static} == set(STATIC_ONLY)


def test_the_service_variable_lists_every_http_service(scraped: dict[str, list[Sample]]) -> None:
    for dashboard in load_dashboards().values():
        for variable in dashboard["templating"]["list"]:
            parsed = label_values_query(variable["query"])
            assert parsed is not None
            selector, label = parsed
            [(name, _)] = selector_matchers(selector)
            values = {
                s.labels[label]
                for samples in scraped.values()
                for s in samples
                if s.name == name and label in s.labels
            }
            assert values >= HTTP_SERVICES, (dashboard["uid"], variable["name"], values)


def test_the_worker_gauges_come_from_the_workers(scraped: dict[str, list[Sample]]) -> None:
    """The generator's job metrics and the trainer's progress: on those processes, with the
    labels the panels group by."""
    generator = {(s.name, s.labels.get("outcome")) for s in scraped["generator"]}
    assert ("boig_generation_job_seconds_count", "succeeded") in generator
    served = [s for s in scraped["generator"] if s.name == "boig_generation_served_reward_count"]
    assert served and served[0].labels["strategy"] == "best_of_n" and served[0].value >= 1
    trainer = {s.name for s in scraped["trainer"]}
    assert {"boig_trainer_epoch", "boig_trainer_reward_mean", "boig_trainer_approx_kl"} <= trainer


def test_every_hop_is_timed_by_the_service_that_calls(scraped: dict[str, list[Sample]]) -> None:
    """The score went gateway -> scorer -> featurizer and describer (match reward); the job
    generator -> describer and scorer: each hop on its caller's /metrics, all ok."""
    hops = {
        (caller, s.labels["upstream"], s.labels["route"])
        for caller, samples in scraped.items()
        for s in samples
        if s.name == "boig_upstream_request_duration_seconds_count"
        and s.labels["service"] == caller
        and s.labels["outcome"] == "ok"
        and s.value >= 1
    }
    assert {
        ("gateway", "scorer", "/score"),
        ("scorer", "featurizer", "/featurize"),
        ("scorer", "describer", "/describe"),
        ("generator", "describer", "/describe"),
        ("generator", "scorer", "/score"),
    } <= hops
    loaded = {
        (s.labels["service"], s.labels["model"])
        for samples in scraped.values()
        for s in samples
        if s.name == "boig_checkpoint_info" and s.value == 1
    }
    assert {("describer", "llm"), ("generator", "diffusion")} <= loaded
