"""The sweeper sends again what the broker may have lost, and only that; and exports the
queue's length and the age of its oldest job on every pass, broker up or not."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import update

from services.common import metrics
from services.common.contracts import Context, GenerateRequest, JobState
from services.common.db import Database
from services.common.jobs import JobRow, JobStore, utcnow
from services.common.queue import GPU_QUEUE, QueueSettings, create_celery_app
from services.generator.sweeper import EPOCH_KEY, BrokerEpoch, Sweeper


def submit(store: JobStore) -> str:
    job, _ = store.submit(
        owner="k",
        request=GenerateRequest(context=Context(account="acme"), seed=1),
        body_hash="h",
        idempotency_key=None,
        max_queued=100,
        retry_after_seconds=1,
    )
    return job.id


def sqlite_queue(folder: Path) -> tuple[QueueSettings, Celery]:
    """A broker in SQLite files under ``folder``: the sweeper's sends, without a server."""
    queue = QueueSettings(
        broker_url=f"sqla+sqlite:///{folder / 'broker.db'}",
        result_backend=f"db+sqlite:///{folder / 'results.db'}",
    )
    return queue, create_celery_app(queue, name="test")


def test_unsent_and_orphaned_jobs_are_sent_again_once(
    tmp_path: Path, database: Database, drain_queue: Any
) -> None:
    queue, celery = sqlite_queue(tmp_path)
    store = JobStore(database)
    published, unsent, orphan = submit(store), submit(store), submit(store)
    store.mark_published(published)
    store.mark_published(orphan)
    assert store.claim(orphan, worker="dead", lease_seconds=0.01) is not None
    time.sleep(0.05)
    sweeper = Sweeper(celery, store, queue, interval=60, unpublished_grace=0.0)
    assert sorted(sweeper.sweep()) == sorted([unsent, orphan])
    assert sorted(drain_queue(celery, GPU_QUEUE)) == sorted([unsent, orphan])
    # Sent once: the next sweep within the grace period sends nothing more.
    later = Sweeper(celery, store, queue, interval=60, unpublished_grace=3600)
    assert later.sweep() == []


def test_an_orphan_out_of_starts_is_failed_not_sent_again(
    tmp_path: Path, database: Database, drain_queue: Any
) -> None:
    queue, celery = sqlite_queue(tmp_path)
    store = JobStore(database)
    killer = submit(store)
    store.mark_published(killer)
    assert store.claim(killer, worker="dead", lease_seconds=0.01, max_attempts=1) is not None
    time.sleep(0.05)
    sweeper = Sweeper(celery, store, queue, interval=60, unpublished_grace=0.0, max_attempts=1)
    assert sweeper.sweep() == []
    assert drain_queue(celery, GPU_QUEUE) == []
    job = store.get(killer)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.type == "worker_lost"


def exported_queue() -> tuple[float | None, float | None]:
    """(boig_generation_queued_jobs, boig_generation_oldest_queued_job_age_seconds)."""
    return (
        metrics.REGISTRY.get_sample_value("boig_generation_queued_jobs"),
        metrics.REGISTRY.get_sample_value("boig_generation_oldest_queued_job_age_seconds"),
    )


def backdate(database: Database, job_id: str, by: timedelta) -> None:
    with database.session() as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(created_at=utcnow() - by))


def test_a_pass_exports_the_queue_length_and_the_oldest_jobs_age(
    tmp_path: Path, database: Database
) -> None:
    queue, celery = sqlite_queue(tmp_path)
    store = JobStore(database)
    sweeper = Sweeper(celery, store, queue, interval=60, unpublished_grace=3600)
    sweeper.measure_queue()
    assert exported_queue() == (0.0, 0.0)
    old, new = submit(store), submit(store)
    backdate(database, old, timedelta(minutes=20))
    sweeper.measure_queue()
    queued, age = exported_queue()
    assert queued == 2.0
    assert age is not None and 1200.0 <= age < 1260.0
    assert store.claim(old, worker="w", lease_seconds=60) is not None
    sweeper.measure_queue()
    queued, age = exported_queue()
    assert queued == 1.0  # the old job started: the new one is the oldest waiting
    assert age is not None and age < 60.0
    assert store.claim(new, worker="w", lease_seconds=60) is not None
    sweeper.measure_queue()
    assert exported_queue() == (0.0, 0.0)


def test_the_queue_gauges_stay_current_while_the_broker_is_down(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: every sweep fails at its first call to the broker.
    queue = QueueSettings(broker_url="redis://127.0.0.1:1/0", socket_timeout_seconds=1)
    store = JobStore(database)
    waiting = submit(store)
    backdate(database, waiting, timedelta(minutes=30))
    metrics.QUEUED_JOBS.set(-1)  # not a count: tells a measured value from an earlier test's
    sweeper = Sweeper(
        create_celery_app(queue, name="test"), store, queue, interval=0.05, unpublished_grace=0
    )
    with caplog.at_level("WARNING", logger="services.generator.sweeper"):
        sweeper.start()
        try:
            # A pass measures before it sweeps: once a sweep has failed, a measurement is in.
            assert wait_for(lambda: "sweep failed" in caplog.text)
            queued, age = exported_queue()
            assert queued == 1.0 and age is not None and age >= 1800.0
            submit(store)  # and later passes go on counting, the broker still down
            assert wait_for(lambda: exported_queue()[0] == 2.0)
        finally:
            sweeper.stop()


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.redis
def test_the_epoch_tells_a_new_or_emptied_redis(redis_url: str) -> None:
    import redis

    url = f"{redis_url}/7"
    client = redis.Redis.from_url(url)
    client.delete(EPOCH_KEY)
    epoch = BrokerEpoch(url)
    assert epoch.lost()  # the key was missing: this Redis may have lost queued tasks
    assert not epoch.lost()
    assert not BrokerEpoch(url).lost()  # a second worker finds the key: nothing was lost
    client.flushdb()  # what a restart without persistence amounts to
    assert epoch.lost()
    assert not epoch.lost()
    client.set(EPOCH_KEY, b"someone else's")
    assert epoch.lost()
