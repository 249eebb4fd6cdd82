"""The Celery worker: the ``boig.generate`` task over the job store, the pipeline and a sweeper.

Run one process per GPU: ``python -m services.generator`` (``celery worker --pool=solo -Q gpu``).
The task is idempotent per job. Its message carries only the job id; the job store's lease
decides whether this delivery runs the job (a redelivery after a crash does; a duplicate of a
job another worker is running, or one already finished, does not).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy.exc import SQLAlchemyError

from services.common import metrics
from services.common.contracts import JobError, JobProgress
from services.common.db import Database
from services.common.errors import (
    BoigError,
    ModelUnavailable,
    TimeLimitExceeded,
    UpstreamError,
)
from services.common.generation import GenerationLimits
from services.common.jobs import JobStore, Lease
from services.common.queue import GENERATE_TASK, PROGRESS_STATE, QueueSettings, create_celery_app
from services.common.storage import ArtifactStore, open_artifact_store
from services.generator import SERVICE
from services.generator.retention import JobRetention
from services.generator.runner import MODEL_DIFFUSION, JobRunner, RunResult
from services.generator.settings import GeneratorSettings
from services.generator.sweeper import Sweeper

logger = logging.getLogger(__name__)


class JobCanceled(Exception):
    """The job's owner asked to cancel it; raised at the next step."""


def _transient(exc: BaseException) -> bool:
    """Errors worth a retry: a service that is down or restarting, a GPU out of memory."""
    if isinstance(exc, UpstreamError | ModelUnavailable | ConnectionError):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError


@dataclass
class Runtime:
    """What one worker process holds: settings, stores and the loaded pipeline."""

    settings: GeneratorSettings
    queue: QueueSettings
    store: JobStore
    runner: JobRunner
    limits: GenerationLimits = field(default_factory=GenerationLimits)

    @property
    def lease_seconds(self) -> float:
        # Longer than any run (runs stop themselves at the time limit) and shorter than the
        # broker's visibility timeout, so a redelivered message finds the lease expired.
        limit = self.queue.task_time_limit_seconds
        return limit + (self.queue.visibility_timeout_seconds - limit) / 2


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
_stores: dict[int, JobStore] = {}
_stores_lock = threading.Lock()


def job_store(settings: GeneratorSettings) -> JobStore:
    """This process's job store, schema ensured once; the sweeper and the tasks share it.

    Keyed by process: a forked pool child must not use its parent's connections.
    """
    with _stores_lock:
        store = _stores.get(os.getpid())
        if store is None:
            database = Database(settings.database_url)
            database.create_schema()
            store = _stores[os.getpid()] = JobStore(database)
        return store


_artifact_stores: dict[int, ArtifactStore] = {}


def artifact_store(settings: GeneratorSettings) -> ArtifactStore:
    """This process's artifact store (one S3 client and its connection pool); the sweeper's
    retention and the tasks share it. Keyed by process like ``job_store``."""
    with _stores_lock:
        store = _artifact_stores.get(os.getpid())
        if store is None:
            store = _artifact_stores[os.getpid()] = open_artifact_store(settings)
        return store


def runtime() -> Runtime:
    """Load models on first use, in the process that runs tasks (never before a fork)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from services.generator.pipeline import ImagePipeline

            settings = GeneratorSettings()
            if settings.torch_threads is not None:
                import torch

                torch.set_num_threads(settings.torch_threads)
            started = time.perf_counter()
            pipeline = ImagePipeline(
                settings.model_path, device=settings.device, dtype=settings.dtype
            )
            seconds = time.perf_counter() - started
            metrics.record_model_load(
                SERVICE,
                MODEL_DIFFUSION,
                name=pipeline.model_path.name,
                version=pipeline.base_version,
                seconds=seconds,
            )
            logger.info(
                "pipeline %s loaded on %s in %.1f s", settings.model_path, pipeline.device, seconds
            )
            _runtime = Runtime(
                settings=settings,
                queue=QueueSettings(),
                store=job_store(settings),
                runner=JobRunner(settings, pipeline, artifact_store(settings)),
            )
        return _runtime


class TaskControl:
    """Progress into the Celery task state; cancellation and the time limit out of each step."""

    def __init__(
        self, task: Task, store: JobStore, job_id: str, *, time_limit: float, interval: float
    ) -> None:
        self._task = task
        self._store = store
        self._job_id = job_id
        self._deadline = time.monotonic() + time_limit
        self._time_limit = time_limit
        self._interval = interval
        self._last_report = 0.0
        self._last_stage = ""

    def check(self) -> None:
        # Solo workers cannot enforce Celery's time limits (no child to kill), so the run
        # stops itself at the next step.
        if time.monotonic() > self._deadline:
            raise TimeLimitExceeded(f"the job ran longer than its {self._time_limit:.0f} s limit")
        if self._store.cancel_requested(self._job_id):
            raise JobCanceled(self._job_id)

    def report(self, progress: JobProgress) -> None:
        now = time.monotonic()
        final = progress.total and progress.step == progress.total
        if (
            progress.stage == self._last_stage
            and not final
            and now - self._last_report < self._interval
        ):
            return
        self._last_report, self._last_stage = now, progress.stage
        try:
            self._task.update_state(state=PROGRESS_STATE, meta=progress.model_dump(mode="json"))
        except Exception as exc:  # progress is best effort; the job must not fail over it
            logger.warning("progress update for %s failed: %s", self._job_id, exc)


def run_job(task: Task, job_id: str) -> dict[str, Any]:
    """The body of ``boig.generate``: claim, run, record exactly once."""
    state = runtime()
    worker = f"{task.request.hostname or socket.gethostname()}"
    try:
        lease = state.store.claim(
            job_id,
            worker=worker,
            lease_seconds=state.lease_seconds,
            max_attempts=state.settings.max_attempts,
        )
    except SQLAlchemyError as exc:
        # The store is down: the message is sent again, with a backoff capped at a minute,
        # for store_outage_retries tries (about an hour). Then it is given up rather than
        # circling forever; the job is still queued in the store, and the sweeper sends it
        # again once its last send is republish_after_seconds old.
        retries = task.request.retries or 0
        if retries >= state.settings.store_outage_retries:
            logger.error(
                "job %s: the job store stayed unreachable for %d tries (%s); the sweeper will "
                "send the job again once the store is back",
                job_id,
                retries,
                exc,
            )
            return {"job_id": job_id, "state": "store-unreachable", "ran": False}
        delay = min(60.0, state.settings.retry_backoff_seconds * 2**retries)
        logger.warning(
            "job %s: the job store is unreachable (%s); again in %.0f s", job_id, exc, delay
        )
        raise task.retry(exc=exc, countdown=delay, max_retries=None) from exc
    if lease is None:
        job = state.store.get(job_id)
        logger.info("job %s not run by this delivery: %s", job_id, job.state.value)
        return {"job_id": job_id, "state": job.state.value, "ran": False}
    logger.info("job %s started (attempt %d)", job_id, lease.job.attempts)
    if lease.job.attempts == 1 and lease.job.started_at is not None:
        wait = (lease.job.started_at - lease.job.created_at).total_seconds()
        metrics.JOB_QUEUE_SECONDS.observe(max(0.0, wait))
    strategy = lease.job.request.strategy or state.settings.default_strategy
    started = time.perf_counter()
    control = TaskControl(
        task,
        state.store,
        job_id,
        time_limit=state.queue.task_time_limit_seconds,
        interval=state.settings.progress_interval_seconds,
    )
    try:
        # A request stored before the limits were lowered (or sent around the gateway) is
        # refused before any denoising, as the gateway would have refused it.
        state.limits.check(lease.job.request)
        result = state.runner.run(lease.job.request, control)
    except JobCanceled:
        state.store.finish_canceled(lease)
        metrics.JOB_SECONDS.labels(strategy, "canceled").observe(time.perf_counter() - started)
        logger.info("job %s canceled while running", job_id)
        return {"job_id": job_id, "state": "canceled", "ran": True}
    except Exception as exc:
        metrics.JOB_SECONDS.labels(strategy, "error").observe(time.perf_counter() - started)
        _retry_or_fail(task, state, lease, exc)
        return {"job_id": job_id, "state": "failed", "ran": True}
    metrics.JOB_SECONDS.labels(strategy, "succeeded").observe(time.perf_counter() - started)
    if not state.store.complete(lease, outcome=result.outcome, images=result.images):
        logger.warning("job %s finished but its lease was lost; another delivery owns it", job_id)
        return {"job_id": job_id, "state": "lost-lease", "ran": True}
    _observe_served_rewards(result, default_reward=state.settings.reward)
    logger.info("job %s succeeded with %d images", job_id, len(result.images))
    return {"job_id": job_id, "state": "succeeded", "ran": True}


def _observe_served_rewards(result: RunResult, *, default_reward: str) -> None:
    """boig_generation_served_reward: once per image the client gets, so after the commit
    (a lost lease records nothing; the delivery that owns the job observes its images)."""
    labels = (result.outcome.strategy, result.outcome.reward or default_reward)
    served = metrics.SERVED_REWARD.labels(*labels)
    plus_one = metrics.SERVED_REWARD_PLUS_ONE.labels(*labels)
    for image in result.images:
        if image.reward is not None:
            served.observe(image.reward)
            # Clamped: a counter refuses a negative step, and the job is already recorded.
            plus_one.inc(max(0.0, image.reward + 1.0))


def _retry_or_fail(task: Task, state: Runtime, lease: Lease, exc: Exception) -> None:
    job_id = lease.job.id
    retries = task.request.retries or 0
    if _transient(exc) and retries < state.settings.max_retries:
        delay = state.settings.retry_backoff_seconds * 2**retries
        logger.warning(
            "job %s: transient %s (%s); retry %d in %.1f s",
            job_id,
            type(exc).__name__,
            exc,
            retries + 1,
            delay,
        )
        state.store.release(lease)
        # Raises celery.exceptions.Retry: the message is sent again with a countdown.
        raise task.retry(exc=exc, countdown=delay, max_retries=state.settings.max_retries)
    if isinstance(exc, BoigError):
        error = JobError(type=exc.type, message=exc.message)
    else:
        logger.exception("job %s failed", job_id)
        # The client sees the kind of failure; the details (paths, internals) stay in the log.
        error = JobError(
            type="backend_error",
            message=f"generation failed ({type(exc).__name__}); the worker's log has details",
        )
    state.store.fail(lease, error)
    logger.info("job %s failed: %s", job_id, error.type)


def register_tasks(app: Celery) -> None:
    @app.task(name=GENERATE_TASK, bind=True, acks_late=True, max_retries=None)
    def generate(self: Task, job_id: str) -> dict[str, Any]:
        return run_job(self, job_id)


celery_app = create_celery_app(QueueSettings(), name="boig-generator")
register_tasks(celery_app)

_sweeper: Sweeper | None = None


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    global _sweeper
    settings = GeneratorSettings()
    _sweeper = Sweeper(
        celery_app,
        job_store(settings),
        QueueSettings(),
        interval=settings.sweep_interval_seconds,
        unpublished_grace=settings.unpublished_grace_seconds,
        max_attempts=settings.max_attempts,
        stale_after=settings.republish_after_seconds,
        retention=(
            JobRetention(
                job_store(settings),
                artifact_store(settings),
                keep_for=timedelta(days=settings.job_retention_days),
                every=settings.retention_interval_seconds,
            )
            if settings.job_retention_days > 0
            else None
        ),
    )
    _sweeper.start()
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__.endswith(".solo"):
        runtime()  # the solo pool runs tasks here: load the pipeline now, not on the first job
    if settings.metrics_port:
        # Last: a /metrics that answers means the worker is ready (what compose checks).
        metrics.serve_worker_metrics(SERVICE, settings.metrics_port, settings.metrics_host)


@worker_process_init.connect
def _on_child(**_: Any) -> None:
    runtime()  # prefork pools: each child loads its own pipeline after the fork


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
    _close_runner()  # the solo pool ran tasks in this process


@worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    _close_runner()  # prefork children run the tasks


def _close_runner() -> None:
    if _runtime is not None:
        _runtime.runner.close()  # the upstream clients' connections and their event loop
