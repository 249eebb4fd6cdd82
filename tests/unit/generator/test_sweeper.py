"""The sweeper sends again what the broker may have lost, and only that."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from services.common.contracts import Context
from services.common.db import Database
from services.common.generation import GenerateRequest, JobState
from services.common.jobs import JobStore
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
