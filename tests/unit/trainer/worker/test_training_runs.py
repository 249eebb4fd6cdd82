"""Training runs: durable rows, leases a dead worker loses, progress, cancel, publish once."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from services.common.db import Database
from services.common.errors import Conflict
from services.trainer.ddpo.job import BoigsdOutcome
from services.trainer.ddpo.run import DdpoRun
from services.trainer.ddpo.train import EpochStats
from services.trainer.runs import RunState, TrainingRunRow, TrainingStore, utcnow
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Sweeper, execute_run


def stats(epoch: int, reward: float = 0.5) -> EpochStats:
    return EpochStats(
        epoch=epoch,
        reward_mean=reward,
        reward_std=0.1,
        loss=0.0,
        approx_kl=1e-4,
        clip_fraction=0.0,
        optimizer_steps=2,
        seconds=0.01,
    )


def settings(tmp_path: Path, **overrides: Any) -> TrainerSettings:
    return TrainerSettings(
        database_url=f"sqlite:///{tmp_path / 'runs.db'}",
        dataset_dir=tmp_path / "dataset",
        runs_root=tmp_path / "runs",
        registry=tmp_path / "registry",
        lease_seconds=60,
        **overrides,
    )


def test_a_live_lease_is_not_taken_and_an_expired_one_is_resumed(database: Database) -> None:
    store = TrainingStore(database)
    run = store.submit("boigsd", {"preset": "tiny"})
    first = store.claim(run.id, worker="a", lease_seconds=60)
    assert first is not None and first.run.state is RunState.RUNNING
    assert store.claim(run.id, worker="b", lease_seconds=60) is None
    assert store.renew(first, lease_seconds=0.01)
    time.sleep(0.05)
    assert store.runs_to_send(unpublished_for=3600) == [run.id]  # its worker is gone
    second = store.claim(run.id, worker="b", lease_seconds=60)
    assert second is not None and second.run.attempts == 2 and second.run.worker == "b"
    assert not store.renew(first, lease_seconds=60)  # the dead worker's lease is void
    assert not store.complete(first, {"checkpoint": "x"})
    assert store.complete(second, {"checkpoint": "v1"})
    assert store.get(run.id).result == {"checkpoint": "v1"}
    assert store.claim(run.id, worker="c", lease_seconds=60) is None


def test_a_run_that_keeps_killing_its_worker_fails_as_worker_lost(database: Database) -> None:
    store = TrainingStore(database)
    run = store.submit("boigsd", {})
    for _ in range(2):
        assert store.claim(run.id, worker="w", lease_seconds=0.01, max_attempts=2) is not None
        time.sleep(0.05)
    assert store.claim(run.id, worker="w", lease_seconds=60, max_attempts=2) is None
    failed = store.get(run.id)
    assert failed.state is RunState.FAILED and failed.error_type == "worker_lost"


def test_cancel_a_queued_run_at_once_and_a_running_one_at_its_next_epoch(
    database: Database,
) -> None:
    store = TrainingStore(database)
    queued = store.submit("boigsd", {})
    assert store.cancel(queued.id).state is RunState.CANCELED
    with pytest.raises(Conflict):
        store.cancel(queued.id)
    running = store.submit("boigsd", {})
    lease = store.claim(running.id, worker="w", lease_seconds=60)
    assert lease is not None
    assert store.cancel(running.id).cancel_requested
    assert store.cancel_requested(running.id)
    assert store.get(running.id).state is RunState.RUNNING


def test_the_worker_reports_progress_and_records_the_result(tmp_path: Path) -> None:
    config = settings(tmp_path)
    database = Database(config.database_url)
    database.create_schema()
    store = TrainingStore(database)
    run = store.submit("boigsd", {"preset": "tiny", "epochs": 3})
    seen: list[dict[str, Any] | None] = []

    def job_runner(job: Any, *, on_epoch: Any, run_dir: Path, **_: Any) -> BoigsdOutcome:
        assert run_dir == config.runs_root / run.id  # resumable: one folder per run
        for epoch in (1, 2, 3):
            on_epoch(stats(epoch, reward=0.1 * epoch))
            seen.append(store.get(run.id).progress)
        history = [{"reward_mean": 0.1}, {"reward_mean": 0.3}]
        return BoigsdOutcome(run=DdpoRun(run_dir, run_dir / "lora", history), checkpoint=None)

    execute_run(store, config, run.id, worker="w", job_runner=job_runner)

    done = store.get(run.id)
    assert done.state is RunState.SUCCEEDED
    assert done.result == {"checkpoint": None, "epochs": 2, "reward_first": 0.1, "reward_last": 0.3}
    assert seen[0] is not None and seen[0]["epoch"] == 1 and seen[0]["epochs"] == 3
    assert "eta_seconds" in seen[0] and "eta_seconds" not in (seen[-1] or {})


def test_the_worker_stops_a_canceled_run_and_types_a_failure(tmp_path: Path) -> None:
    config = settings(tmp_path)
    database = Database(config.database_url)
    database.create_schema()
    store = TrainingStore(database)
    canceled = store.submit("boigsd", {"preset": "tiny"})

    def cancel_during(job: Any, *, on_epoch: Any, **_: Any) -> BoigsdOutcome:
        store.cancel(canceled.id)
        on_epoch(stats(1))
        raise AssertionError("a canceled run must stop at its epoch's end")

    execute_run(store, config, canceled.id, worker="w", job_runner=cancel_during)
    assert store.get(canceled.id).state is RunState.CANCELED

    broken = store.submit("boigsd", {"preset": "huge"})
    execute_run(store, config, broken.id, worker="w", job_runner=cancel_during)
    failed = store.get(broken.id)
    assert failed.state is RunState.FAILED and failed.error_type == "backend_error"
    assert "preset" in (failed.error_message or "")


def test_the_sweeper_sends_unsent_and_orphaned_runs(
    tmp_path: Path, database: Database, drain_queue: Any
) -> None:
    from services.common.queue import TRAIN_QUEUE, QueueSettings, create_celery_app

    queue = QueueSettings(
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        result_backend=f"db+sqlite:///{tmp_path / 'results.db'}",
    )
    celery = create_celery_app(queue, name="test-trainer")
    store = TrainingStore(database)
    unsent = store.submit("boigsd", {})
    sent = store.submit("boigsd", {})
    store.mark_published(sent.id)
    orphan = store.submit("boigsd", {})
    store.mark_published(orphan.id)
    assert store.claim(orphan.id, worker="dead", lease_seconds=0.01) is not None
    time.sleep(0.05)
    with database.session() as session:  # the unsent run has waited past the grace period
        session.execute(
            update(TrainingRunRow)
            .where(TrainingRunRow.id == unsent.id)
            .values(created_at=utcnow() - timedelta(hours=2))
        )
    sweeper = Sweeper(celery, store, settings(tmp_path, unpublished_grace_seconds=3600))
    assert sorted(sweeper.sweep()) == sorted([unsent.id, orphan.id])
    assert sorted(drain_queue(celery, TRAIN_QUEUE)) == sorted([unsent.id, orphan.id])
    assert sweeper.sweep() == []
    # Sent and still queued behind a busy worker: not sent again.
    assert store.runs_to_send(unpublished_for=0) == []
