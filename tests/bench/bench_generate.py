"""Generation benchmarks: enqueue-to-start latency of the queue, and the worker's overhead
per image against the bare diffusers call on the same tiny model.

1. Latency: a real worker (``python -m services.generator``, solo pool) idles on the broker;
   each job is created, its task sent, and the time from the send to the worker's claim (the
   job's ``started_at``, written by the worker) is taken. Redis on 127.0.0.1:6379 (the
   deployment broker) and the embedded SQLite broker. Goal: p50 under 50 ms on Redis.
2. Overhead: ``ImagePipeline.generate`` with the worker's per-step control (a cancel check in
   the SQL store, throttled progress to the Celery result backend) against ``pipe(...)`` with
   the same arguments, interleaved, medians. Goal: at most 10% slower.

Run: ``make bench`` (or ``python tests/bench/bench_generate.py``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch

from services.common.contracts import Context, GenerateRequest
from services.common.db import Database
from services.common.jobs import JobStore
from services.common.queue import QueueSettings, create_celery_app, send_generation_task
from services.generator.pipeline import ImagePipeline, ImageRequest
from services.generator.tiny_pipeline import prepare_tiny_pipeline
from services.generator.worker import TaskControl
from services.tooling.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "tests" / "reliability" / "stub_upstreams.py"
REDIS_URL = "redis://127.0.0.1:6379/8"
JOBS = 30
REPEATS = 7


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def latency(broker: str, backend: str, work: Path, model: Path, upstream: str) -> list[float]:
    database = Database(f"sqlite:///{work / 'boig.db'}")
    database.create_schema()
    store = JobStore(database)
    queue = QueueSettings(broker_url=broker, result_backend=backend)
    celery = create_celery_app(queue, name="bench")
    env = {
        **os.environ,
        "BOIG_HOME": str(work / "home"),
        "BOIG_QUEUE_BROKER_URL": broker,
        "BOIG_QUEUE_RESULT_BACKEND": backend,
        "BOIG_GENERATOR_MODEL_PATH": str(model),
        "BOIG_GENERATOR_DATABASE_URL": database.url,
        "BOIG_GENERATOR_ARTIFACT_ROOT": str(work / "artifacts"),
        "BOIG_GENERATOR_DESCRIBER_URL": upstream,
        "BOIG_GENERATOR_SCORER_URL": upstream,
        "BOIG_GENERATOR_METRICS_PORT": str(free_port()),
        "BOIG_GENERATOR_LOG_LEVEL": "WARNING",
    }
    log = (work / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.generator"], env=env, stdout=log, stderr=log
    )
    metrics_url = f"http://127.0.0.1:{env['BOIG_GENERATOR_METRICS_PORT']}/metrics"
    try:
        wait_for(lambda: _answers(metrics_url), 120, "the worker")
        samples = []
        for n in range(JOBS + 3):
            job, _ = store.submit(
                owner="bench",
                request=GenerateRequest(context=Context(account="acme"), count=1, steps=1, seed=n),
                body_hash=str(n),
                idempotency_key=None,
                max_queued=1000,
                retry_after_seconds=1,
            )
            sent_at = datetime.now(UTC)
            send_generation_task(celery, job.id)
            wait_for(
                lambda job_id=job.id: store.get(job_id).state.value in ("succeeded", "failed"),
                60,
                "the job",
            )
            started = store.get(job.id).started_at
            assert started is not None
            if n >= 3:  # the first jobs warm the worker's connections up
                samples.append((started - sent_at).total_seconds() * 1000)
            time.sleep(0.05)  # an idle worker, waiting on the broker
        return samples
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        database.dispose()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class BackendProgress:
    """What the worker's task does with progress: store it in the Celery result backend."""

    def __init__(self, celery: Any, task_id: str) -> None:
        self._backend = celery.backend
        self._task_id = task_id

    def update_state(self, *, state: str, meta: dict[str, Any]) -> None:
        self._backend.store_result(self._task_id, meta, state)


def overhead(
    model: Path, work: Path, *, guidance_scale: float = 7.5, size: int = 64
) -> tuple[float, float, float]:
    """(bare seconds per image, worker's seconds per image, ratio) at batch 4, 25 steps."""
    pipeline = ImagePipeline(model)
    pipe = pipeline.pipe
    request = ImageRequest(
        prompt="a red circle at top left, mostly beige background, warm bright tones",
        negative_prompt="navy, dark cool tones",
        width=size,
        height=size,
        steps=25,
        guidance_scale=guidance_scale,
        seed=1,
        count=4,
    )
    database = Database(f"sqlite:///{work / 'overhead.db'}")
    database.create_schema()
    store = JobStore(database)
    job, _ = store.submit(
        owner="bench",
        request=GenerateRequest(context=Context(account="acme"), seed=1),
        body_hash="h",
        idempotency_key=None,
        max_queued=10,
        retry_after_seconds=1,
    )
    celery = create_celery_app(
        QueueSettings(broker_url=REDIS_URL, result_backend=REDIS_URL), name="bench"
    )
    control = TaskControl(
        BackendProgress(celery, job.id),  # type: ignore[arg-type]
        store,
        job.id,
        time_limit=600,
        interval=0.25,
    )

    def on_step(step: int, total: int) -> None:
        from services.common.contracts import JobProgress

        control.check()
        control.report(JobProgress(stage="denoising", step=step, total=total))

    def bare() -> None:
        generators = [torch.Generator("cpu").manual_seed(1 + i) for i in range(4)]
        pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=size,
            height=size,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=4,
            generator=generators,
        )

    def ours() -> None:
        pipeline.generate(request, on_step=on_step)

    bare()
    ours()
    bare_times, our_times = [], []
    for _ in range(REPEATS):
        for fn, times in ((bare, bare_times), (ours, our_times)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    database.dispose()
    bare_median, our_median = statistics.median(bare_times), statistics.median(our_times)
    return bare_median / 4, our_median / 4, our_median / bare_median


def main() -> None:
    model = prepare_tiny_pipeline()
    port = free_port()
    stubs = subprocess.Popen([sys.executable, str(STUBS), str(port)])
    upstream = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{upstream}/health"), 30, "the stub upstreams")
        with tempfile.TemporaryDirectory(prefix="boig-bench-") as tmp:
            work = Path(tmp)
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
            (work / "redis").mkdir()
            redis_ms = latency(REDIS_URL, REDIS_URL, work / "redis", model, upstream)
            (work / "sqlite").mkdir()
            sqlite_ms = latency(
                f"sqla+sqlite:///{work / 'sqlite' / 'broker.db'}",
                f"db+sqlite:///{work / 'sqlite' / 'results.db'}",
                work / "sqlite",
                model,
                upstream,
            )
            bare_s, ours_s, ratio = overhead(model, work)
    finally:
        stubs.terminate()
        stubs.wait(timeout=10)

    def quantiles(values: list[float]) -> str:
        q = statistics.quantiles(values, n=10)
        return f"p50 {statistics.median(values):.1f} ms, p90 {q[8]:.1f} ms (n={len(values)})"

    print("enqueue-to-start latency, idle worker on loopback:")
    print(f"  Redis broker:              {quantiles(redis_ms)}   goal: p50 < 50 ms")
    print(f"  embedded SQLite broker:    {quantiles(sqlite_ms)}   (polls every 0.1 s)")
    print("generation time per image, tiny SD 64x64, 25 steps, batch 4, medians of 7:")
    print(f"  bare diffusers pipe(...):  {bare_s * 1000:.1f} ms")
    print(f"  worker's generate + control: {ours_s * 1000:.1f} ms")
    print(f"  ratio: {ratio:.3f}   goal: <= 1.10")


if __name__ == "__main__":
    main()
