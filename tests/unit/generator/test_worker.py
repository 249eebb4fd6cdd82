"""The task's control of a run: progress throttling, cancellation, the time limit, retries;
the served-reward histogram, fed by the images a job returns and no others; and the loaded
pipeline's version and load time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from services.common import metrics
from services.common.contracts import (
    Context,
    CreativeScore,
    DescribeResponse,
    GenerateRequest,
    JobProgress,
    JobState,
    ModelInfo,
    ScoreResponse,
    Tone,
    Verbalization,
)
from services.common.db import Database
from services.common.errors import (
    BackendError,
    InvalidInput,
    ModelUnavailable,
    TimeLimitExceeded,
    UpstreamError,
)
from services.common.jobs import JobStore
from services.generator.worker import JobCanceled, TaskControl, _transient


class RecordingTask:
    def __init__(self, fail: bool = False) -> None:
        self.states: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def update_state(self, *, state: str, meta: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("result backend down")
        self.states.append((state, meta))


@pytest.fixture
def store(database: Database) -> JobStore:
    return JobStore(database)


def running_job(store: JobStore) -> str:
    job, _ = store.submit(
        owner="k",
        request=GenerateRequest(context=Context(account="acme"), seed=1),
        body_hash="h",
        idempotency_key=None,
        max_queued=10,
        retry_after_seconds=1,
    )
    assert store.claim(job.id, worker="w", lease_seconds=60) is not None
    return job.id


def control(task: RecordingTask, store: JobStore, job_id: str, **kw: float) -> TaskControl:
    options = {"time_limit": 60.0, "interval": 10.0, **kw}
    return TaskControl(task, store, job_id, **options)  # type: ignore[arg-type]


def test_progress_is_throttled_but_stage_changes_and_the_last_step_always_go_out(
    store: JobStore,
) -> None:
    task = RecordingTask()
    ctl = control(task, store, running_job(store))
    ctl.report(JobProgress(stage="describing", step=0, total=10))
    for step in range(1, 11):
        ctl.report(JobProgress(stage="denoising", step=step, total=10))
    steps = [(meta["stage"], meta["step"]) for _, meta in task.states]
    assert steps == [("describing", 0), ("denoising", 1), ("denoising", 10)]
    assert {state for state, _ in task.states} == {"PROGRESS"}


def test_a_failing_progress_update_does_not_fail_the_job(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = running_job(store)
    task = RecordingTask(fail=True)
    ctl = control(task, store, job_id)
    with caplog.at_level("WARNING", logger="services.generator.worker"):
        ctl.report(JobProgress(stage="denoising", step=1, total=2))  # logged, not raised
    assert f"progress update for {job_id} failed" in caplog.text
    assert "result backend down" in caplog.text
    # The job goes on: still running under its lease, and the next report is tried again.
    assert store.get(job_id).state is JobState.RUNNING
    task.fail = False
    ctl.report(JobProgress(stage="denoising", step=2, total=2))
    assert [meta["step"] for _, meta in task.states] == [2]


def test_check_raises_when_the_owner_cancels(store: JobStore) -> None:
    job_id = running_job(store)
    ctl = control(RecordingTask(), store, job_id)
    ctl.check()
    store.request_cancel(job_id, owner="k")
    with pytest.raises(JobCanceled):
        ctl.check()


def test_check_raises_past_the_time_limit(store: JobStore) -> None:
    ctl = control(RecordingTask(), store, running_job(store), time_limit=0.01)
    time.sleep(0.02)
    with pytest.raises(TimeLimitExceeded) as stopped:
        ctl.check()
    assert stopped.value.type == "time_limit_exceeded"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (UpstreamError("scorer unreachable"), True),
        (ModelUnavailable("loading"), True),
        (ConnectionError("reset"), True),
        (InvalidInput("bad"), False),
        (BackendError("bug"), False),
        (TimeLimitExceeded("slow"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_errors_are_retried(error: Exception, transient: bool) -> None:
    assert _transient(error) is transient


def test_cuda_out_of_memory_is_transient() -> None:
    out_of_memory = type("OutOfMemoryError", (RuntimeError,), {})
    assert _transient(out_of_memory("CUDA out of memory"))


class RetryingTask:
    """A bound task whose retry() is recorded; Celery's raises Retry to end the run."""

    class Retry(Exception):
        pass

    def __init__(self, retries: int) -> None:
        self.request = type("Request", (), {"retries": retries, "hostname": "w@test"})()
        self.retried: list[tuple[float, int | None]] = []

    def retry(self, *, exc: Exception, countdown: float, max_retries: int | None) -> Exception:
        self.retried.append((countdown, max_retries))
        return self.Retry(str(exc))


def test_a_job_store_outage_at_claim_sends_the_message_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    from services.common.queue import QueueSettings
    from services.generator import worker
    from services.generator.settings import GeneratorSettings

    class DownStore:
        def claim(self, *_: object, **__: object) -> None:
            raise OperationalError("UPDATE generation_jobs", {}, ConnectionError("refused"))

    runtime = worker.Runtime(
        settings=GeneratorSettings(retry_backoff_seconds=2.0),
        queue=QueueSettings(),
        store=DownStore(),  # type: ignore[arg-type]
        runner=None,  # type: ignore[arg-type]
    )
    monkeypatch.setattr(worker, "_runtime", runtime)
    task = RetryingTask(retries=2)
    with pytest.raises(RetryingTask.Retry):
        worker.run_job(task, "some-job")  # type: ignore[arg-type]
    assert task.retried == [(8.0, None)]  # 2 s doubled twice; retried until the store is back
    many = RetryingTask(retries=10)
    with pytest.raises(RetryingTask.Retry):
        worker.run_job(many, "some-job")  # type: ignore[arg-type]
    assert many.retried == [(60.0, None)]
    # After store_outage_retries tries the message is given up, not sent around forever:
    # the job is still queued in the store and the sweeper sends it again later.
    spent = RetryingTask(retries=runtime.settings.store_outage_retries)
    outcome = worker.run_job(spent, "some-job")  # type: ignore[arg-type]
    assert spent.retried == [] and outcome["state"] == "store-unreachable"


def test_max_attempts_must_leave_room_for_the_transient_retries() -> None:
    from pydantic import ValidationError

    from services.generator.settings import GeneratorSettings

    assert GeneratorSettings(max_retries=3, max_attempts=4).max_attempts == 4
    with pytest.raises(ValidationError, match="must exceed max_retries"):
        GeneratorSettings(max_retries=3, max_attempts=3)


def test_a_stored_request_beyond_the_limits_fails_before_any_denoising(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.contracts import JobState
    from services.common.generation import GenerationLimits
    from services.common.queue import QueueSettings
    from services.generator import worker
    from services.generator.settings import GeneratorSettings

    class NoRunner:
        def run(self, *_: object) -> None:
            raise AssertionError("a job beyond the limits was run")

    job, _ = store.submit(
        owner="k",
        request=GenerateRequest(context=Context(account="acme"), seed=1, steps=80),
        body_hash="h",
        idempotency_key=None,
        max_queued=10,
        retry_after_seconds=1,
    )
    runtime = worker.Runtime(
        settings=GeneratorSettings(),
        queue=QueueSettings(),
        store=store,
        runner=NoRunner(),  # type: ignore[arg-type]
        limits=GenerationLimits(max_steps=50),
    )
    monkeypatch.setattr(worker, "_runtime", runtime)

    outcome = worker.run_job(RetryingTask(retries=0), job.id)  # type: ignore[arg-type]

    assert outcome["state"] == "failed"
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error.type == "invalid_input" and "80 steps; at most 50" in failed.error.message


def test_the_served_reward_counts_the_kept_images_of_a_job_once(
    store: JobStore, tiny_sd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.queue import QueueSettings
    from services.common.storage import LocalArtifactStore
    from services.generator import worker
    from services.generator.pipeline import ImagePipeline
    from services.generator.runner import JobRunner
    from services.generator.settings import GeneratorSettings

    settings = GeneratorSettings(reward="contrastive")
    runner = JobRunner(settings, ImagePipeline(tiny_sd_dir), LocalArtifactStore(tmp_path))
    # The upstreams answer at once: the describer any look, the scorer these rewards by
    # candidate. best_of_n keeps the best 2 of 4, so 0.05 and 0.35 are never served.
    rewards = [0.05, 0.95, 0.55, 0.35]

    async def describe(*_: object) -> tuple[DescribeResponse, None]:
        return DescribeResponse(
            verbalization=Verbalization(tones=[Tone.WARM]),
            text="warm",
            repairs=[],
            model=ModelInfo(name="stub-describer", version="1"),
            prompt_version="stub",
            cached=False,
        ), None

    async def score(_: GenerateRequest, pngs: list[bytes], *__: object) -> ScoreResponse:
        ranked = sorted(range(len(pngs)), key=lambda index: -rewards[index])
        return ScoreResponse(
            reward="contrastive",
            weights={"stub": 1.0},
            targets=[],
            results=[
                CreativeScore(
                    id=f"candidate-{index}",
                    rank=rank,
                    total=rewards[index],
                    breakdown={"stub": rewards[index]},
                    verbalization=Verbalization(),
                )
                for rank, index in enumerate(ranked, start=1)
            ],
            models={"scorer": ModelInfo(name="stub-scorer", version="1")},
        )

    monkeypatch.setattr(runner, "_describe", describe)
    monkeypatch.setattr(runner, "_score", score)
    monkeypatch.setattr(
        worker,
        "_runtime",
        worker.Runtime(settings=settings, queue=QueueSettings(), store=store, runner=runner),
    )
    job, _ = store.submit(
        owner="k",
        request=GenerateRequest(
            context=Context(account="acme"),
            seed=1,
            steps=2,
            strategy="best_of_n",
            count=2,
            candidates=4,
        ),
        body_hash="h",
        idempotency_key=None,
        max_queued=10,
        retry_after_seconds=1,
    )
    labels = {"strategy": "best_of_n", "reward": "contrastive"}

    def served(series: str, **extra: str) -> float:
        name = f"boig_generation_served_reward_{series}"
        return metrics.REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    def plus_one() -> float:
        name = "boig_generation_served_reward_plus_one_total"
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = (served("count"), plus_one(), served("bucket", le="0.1"), served("bucket", le="0.4"))

    task = JobTask()
    assert worker.run_job(task, job.id)["state"] == "succeeded"  # type: ignore[arg-type]

    assert [image.reward for image in store.images(job.id)] == [0.95, 0.55]
    assert served("count") - before[0] == 2
    assert plus_one() - before[1] == pytest.approx(1.95 + 1.55)  # the mean: 3.5 / 2 - 1 = 0.75
    assert served("bucket", le="0.1") == before[2]  # 0.05: a discarded candidate
    assert served("bucket", le="0.4") == before[3]  # 0.35: likewise
    # A second delivery of the finished job runs nothing and serves nothing new.
    assert worker.run_job(JobTask(), job.id)["ran"] is False  # type: ignore[arg-type]
    assert served("count") - before[0] == 2


class JobTask(RecordingTask):
    """A first delivery of a task: progress is recorded, no retries yet."""

    request = type("Request", (), {"retries": 0, "hostname": "w@test"})()


def test_the_worker_exports_the_pipeline_it_loaded_and_its_load_time(
    tiny_sd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.generator import worker

    monkeypatch.setenv("BOIG_GENERATOR_MODEL_PATH", str(tiny_sd_dir))
    monkeypatch.setenv("BOIG_GENERATOR_DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    monkeypatch.setenv("BOIG_GENERATOR_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setattr(worker, "_runtime", None)
    monkeypatch.setattr(worker, "_stores", {})
    monkeypatch.setattr(worker, "_artifact_stores", {})
    metrics.MODEL_LOAD_SECONDS.labels("generator", "diffusion").set(-1.0)  # not this load
    pipeline = worker.runtime().runner.pipeline
    served = [
        sample.labels
        for family in metrics.REGISTRY.collect()
        if family.name == "boig_checkpoint_info"
        for sample in family.samples
        if sample.labels["service"] == "generator" and sample.labels["model"] == "diffusion"
    ]
    # The name and version a job reports in its models["diffusion"].
    assert served == [
        {
            "service": "generator",
            "model": "diffusion",
            "name": tiny_sd_dir.name,
            "version": pipeline.base_version,
        }
    ]
    seconds = metrics.REGISTRY.get_sample_value(
        "boig_model_load_seconds", {"service": "generator", "model": "diffusion"}
    )
    assert seconds is not None and seconds > 0
