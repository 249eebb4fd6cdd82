"""The training worker: Celery on the ``train`` queue, one run at a time (``--pool=solo``).

Two kinds of run: a BoigSD DDPO job, and a BoigLLM retrain (fold KPI feedback, train a
candidate, promote or reject it), which the sweeper also queues every
BOIG_TRAINER_RETRAIN_INTERVAL_SECONDS when that is set.

A run is a row before its task is sent (``boig sd train --enqueue``). The worker takes it
under a lease that a heartbeat thread renews; progress (epoch, reward, KL, ETA) goes to the
row after each epoch, where cancellation is also read. A worker that dies leaves its lease to
run out: the sweeper of any live worker sends the run again, and whoever claims it resumes
from the run folder's last checkpoint, never from scratch, and publishes once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from celery import Celery, Task
from celery.signals import worker_ready, worker_shutdown
from prometheus_client import Gauge

from services.common import metrics
from services.common.checkpoints import (
    BOIGLLM_CHECKPOINT,
    BOIGSD_CHECKPOINT,
    current_checkpoint,
    list_versions,
)
from services.common.errors import BoigError
from services.common.queue import (
    TRAIN_TASK,
    QueueSettings,
    create_celery_app,
    send_training_task,
)
from services.common.retraining import RetrainLedger
from services.trainer.ddpo.job import (
    BoigsdJob,
    BoigsdOutcome,
    Services,
    config_for,
    run_boigsd_job,
)
from services.trainer.ddpo.train import EpochStats
from services.trainer.finetune.train import StepReport
from services.trainer.retrain.job import RETRAIN, RetrainJob, run_retrain_job, schedule_retrain
from services.trainer.retrain.pipeline import RetrainOutcome, Stage
from services.trainer.retrain.registry import record_registry
from services.trainer.runs import RunLease, TrainingStore
from services.trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

BOIGSD = "boigsd"

EPOCH = Gauge(
    "boig_trainer_epoch", "Epochs done by the run in progress.", registry=metrics.REGISTRY
)
REWARD = Gauge(
    "boig_trainer_reward_mean", "Mean reward of the last epoch.", registry=metrics.REGISTRY
)
KL = Gauge("boig_trainer_approx_kl", "Approximate KL of the last epoch.", registry=metrics.REGISTRY)

JobRunner = Callable[..., BoigsdOutcome]
RetrainRunner = Callable[..., RetrainOutcome]
RETRAIN_REPORT_EVERY_STEPS = 5
"""A retrain's candidate reports its step to the run's row this often (and at its end)."""


class RunCanceled(Exception):
    pass


class LeaseLost(Exception):
    pass


class Heartbeat:
    """Renews a run's lease every quarter of it until stopped; notices when it is lost."""

    def __init__(self, store: TrainingStore, lease: RunLease, lease_seconds: float) -> None:
        self._store, self._lease, self._seconds = store, lease, lease_seconds
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name="boig-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._seconds / 4):
            try:
                if not self._store.renew(self._lease, lease_seconds=self._seconds):
                    self.lost = True
                    return
            except Exception as exc:  # the database blinked: the next beat tries again
                logger.warning("lease renewal failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def execute_run(
    store: TrainingStore,
    settings: TrainerSettings,
    run_id: str,
    *,
    worker: str,
    job_runner: JobRunner = run_boigsd_job,
    retrain_runner: RetrainRunner = run_retrain_job,
) -> None:
    """Claim and run (or resume) one training run; a run that is not ours is left alone."""
    lease = store.claim(
        run_id,
        worker=worker,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
    )
    if lease is None:
        logger.info("run %s is not ours to run (finished, canceled or live elsewhere)", run_id)
        return
    heartbeat = Heartbeat(store, lease, settings.lease_seconds)
    started = time.monotonic()
    try:
        if lease.run.kind == RETRAIN:
            result = _retrain(store, settings, lease, heartbeat, retrain_runner)
            store.complete(lease, result)
            logger.info("run %s finished: %s", run_id, result["action"])
            return
        if lease.run.kind != BOIGSD:
            raise BoigError(f"unknown training kind {lease.run.kind!r}")
        job = BoigsdJob.model_validate(lease.run.params)
        if settings.dataset_dir is None:
            raise BoigError("BOIG_TRAINER_DATASET_DIR is not set: no training contexts")

        total = config_for(job, settings.model_path).epochs
        done_before: list[int] = []

        def on_epoch(stats: EpochStats) -> None:
            EPOCH.set(stats.epoch)
            REWARD.set(stats.reward_mean)
            KL.set(stats.approx_kl)
            if heartbeat.lost:
                raise LeaseLost
            # ETA from this attempt's pace (a resumed run's first epoch here is not its first).
            done_before.append(stats.epoch)
            progress: dict[str, Any] = {**asdict(stats), "epochs": total}
            done_here = stats.epoch - done_before[0] + 1
            if total > stats.epoch:
                pace = (time.monotonic() - started) / done_here
                progress["eta_seconds"] = pace * (total - stats.epoch)
            try:
                store.report(lease, progress)
                canceled = store.cancel_requested(run_id)
            except Exception as exc:  # the database blinked: a long run does not end here
                logger.warning("run %s: progress not recorded: %s", run_id, exc)
                return
            if canceled:
                raise RunCanceled

        outcome = job_runner(
            job,
            model=settings.model_path,
            dataset=settings.dataset_dir,
            services=Services(settings.describer_url, settings.scorer_url),
            run_dir=settings.runs_root / run_id,
            registry=settings.registry,
            on_epoch=on_epoch,
            device=settings.device,
        )
        history = outcome.run.history
        store.complete(
            lease,
            {
                "checkpoint": outcome.checkpoint.version if outcome.checkpoint else None,
                "epochs": len(history),
                "reward_first": history[0]["reward_mean"] if history else None,
                "reward_last": history[-1]["reward_mean"] if history else None,
            },
        )
        logger.info("run %s finished", run_id)
    except RunCanceled:
        store.finish_canceled(lease)
        logger.info("run %s canceled", run_id)
    except LeaseLost:
        logger.warning("run %s: lease lost to another worker; stopping", run_id)
    except Exception as exc:
        error_type = exc.type if isinstance(exc, BoigError) else "backend_error"
        store.fail(lease, error_type, str(exc) or type(exc).__name__)
        logger.exception("run %s failed", run_id)
    finally:
        heartbeat.stop()


def _retrain(
    store: TrainingStore,
    settings: TrainerSettings,
    lease: RunLease,
    heartbeat: Heartbeat,
    runner: RetrainRunner,
) -> dict[str, object]:
    """A BoigLLM retrain under the run's lease: its stage and training step go to the row,
    where cancellation is read; its result is the decision (or why nothing was decided)."""
    job = RetrainJob.model_validate(lease.run.params)
    progress: dict[str, Any] = {}

    def report(**values: Any) -> None:
        if heartbeat.lost:
            raise LeaseLost
        progress.update(values)
        try:
            store.report(lease, progress)
            canceled = store.cancel_requested(lease.run.id)
        except Exception as exc:  # the database blinked: a long run does not end here
            logger.warning("run %s: progress not recorded: %s", lease.run.id, exc)
            return
        if canceled:
            raise RunCanceled

    def on_stage(stage: Stage) -> None:
        report(stage=stage)

    def on_step(step: StepReport) -> None:
        if step.step % RETRAIN_REPORT_EVERY_STEPS == 0 or step.step == step.max_steps:
            report(stage="train", step=step.step, steps=step.max_steps, loss=step.loss)

    outcome = runner(
        job,
        settings,
        database=store.database,
        run_id=lease.run.id,
        on_stage=on_stage,
        on_step=on_step,
    )
    return outcome.summary()


class Sweeper:
    """Sends again the runs whose task may be lost, and fails runs out of attempts."""

    def __init__(self, app: Celery, store: TrainingStore, settings: TrainerSettings) -> None:
        self._app, self._store, self._settings = app, store, settings
        self._registry_seen: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="boig-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def sweep(self) -> list[str]:
        self._store.fail_lost(max_attempts=self._settings.max_attempts)
        run_ids = self._store.runs_to_send(unpublished_for=self._settings.unpublished_grace_seconds)
        for run_id in run_ids:
            send_training_task(self._app, run_id)
            self._store.mark_published(run_id)
        if run_ids:
            logger.info("sent %d training runs again", len(run_ids))
        # The periodic retrain rides on the sweep: its check is one query while nothing is due.
        scheduled = schedule_retrain(self._store, self._settings)
        if scheduled is not None:
            send_training_task(self._app, scheduled)
            self._store.mark_published(scheduled)
            run_ids.append(scheduled)
        self.record_registry()
        return run_ids

    def record_registry(self) -> list[str]:
        """Record the registry's entries whose pointer or versions changed since the last
        sweep (publishes and moves made elsewhere: `make train-llm`, a hand-edited pointer),
        so that the gateway's GET /v1/checkpoints follows; the entries recorded."""
        recorded = []
        for name in (BOIGLLM_CHECKPOINT, BOIGSD_CHECKPOINT):
            current = current_checkpoint(self._settings.registry, name)
            state = (
                current.version if current is not None else None,
                tuple(ref.version for ref in list_versions(self._settings.registry, name)),
            )
            if self._registry_seen.get(name) == state:
                continue
            record_registry(RetrainLedger(self._store.database), self._settings.registry, name)
            self._registry_seen[name] = state
            recorded.append(name)
        return recorded

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.sweep_interval_seconds):
            try:
                self.sweep()
            except Exception as exc:
                logger.warning("sweep failed: %s: %s", type(exc).__name__, exc)


def create_trainer_celery(settings: TrainerSettings) -> Celery:
    """The training worker's Celery app: broker and backend from BOIG_QUEUE_*, time limits
    sized to training (the lease, not the broker, decides when a run is taken over)."""
    limit = settings.task_time_limit_seconds
    queue = QueueSettings(task_time_limit_seconds=limit, visibility_timeout_seconds=limit + 3600)
    return create_celery_app(queue, name="boig-trainer")


settings = TrainerSettings()
celery_app = create_trainer_celery(settings)
_store: TrainingStore | None = None
_sweeper: Sweeper | None = None


def store() -> TrainingStore:
    global _store
    if _store is None:
        _store = TrainingStore.open(settings.database_url)
    return _store


@celery_app.task(name=TRAIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def train(self: Task, run_id: str) -> None:
    hostname = self.request.hostname or socket.gethostname()
    execute_run(store(), settings, run_id, worker=f"{hostname}:{os.getpid()}")


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    global _sweeper
    _sweeper = Sweeper(celery_app, store(), settings)
    _sweeper.start()
    if settings.metrics_port:
        metrics.serve_worker_metrics("trainer", settings.metrics_port, settings.metrics_host)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
