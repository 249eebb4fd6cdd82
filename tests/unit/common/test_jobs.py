"""The job store: idempotency, backpressure, leases, exactly-once completion, cancellation.

Runs on SQLite and on the real PostgreSQL (marked), like every store test.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from services.common.contracts import Context, GenerateRequest, JobError, JobState
from services.common.db import Database
from services.common.errors import Conflict, NotFound, Overloaded
from services.common.jobs import JobStore, request_hash, utcnow
from tests.job_records import images, outcome

BODY = b'{"context": {"account": "acme", "text": "summer sale"}, "count": 2}'


def make_request(seed: int = 7) -> GenerateRequest:
    return GenerateRequest(context=Context(account="acme", text="summer sale"), count=2, seed=seed)


@pytest.fixture
def store(database: Database) -> JobStore:
    return JobStore(database)


def submit(
    store: JobStore,
    *,
    key: str | None = None,
    body: bytes = BODY,
    owner: str = "k1",
    max_queued: int = 10,
):
    return store.submit(
        owner=owner,
        request=make_request(),
        body_hash=request_hash(body),
        idempotency_key=key,
        max_queued=max_queued,
        retry_after_seconds=5,
    )


def test_request_hash_ignores_key_order_and_spacing() -> None:
    a = request_hash(b'{"a": 1, "b": {"c": [1, 2]}}')
    assert a == request_hash(b'{"b":{"c":[1,2]},"a":1}')
    assert a != request_hash(b'{"a": 2, "b": {"c": [1, 2]}}')


def test_same_idempotency_key_and_body_return_the_same_job(store: JobStore) -> None:
    first, created = submit(store, key="order-1")
    again, created_again = submit(store, key="order-1")
    assert created and not created_again
    assert again.id == first.id
    assert store.queued_count() == 1


def test_same_key_with_another_body_is_a_conflict(store: JobStore) -> None:
    submit(store, key="order-1")
    with pytest.raises(Conflict):
        submit(store, key="order-1", body=BODY.replace(b"2}", b"3}"))


def test_idempotency_keys_belong_to_their_owner(store: JobStore) -> None:
    mine, _ = submit(store, key="order-1", owner="k1")
    theirs, created = submit(store, key="order-1", owner="k2")
    assert created and theirs.id != mine.id
    with pytest.raises(NotFound):
        store.get(mine.id, owner="k2")


def test_concurrent_submissions_with_one_key_make_one_job(store: JobStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda _: submit(store, key="race")[0].id, range(16)))
    assert len(set(jobs)) == 1
    assert store.queued_count() == 1


def test_a_full_queue_refuses_with_retry_after(store: JobStore) -> None:
    for _ in range(3):
        submit(store, max_queued=3)
    with pytest.raises(Overloaded) as refused:
        submit(store, max_queued=3)
    assert refused.value.retry_after == 5
    # A replay of a known key is answered even while the queue is full.
    keyed, _ = submit(store, key="known", max_queued=10)
    replayed, created = submit(store, key="known", max_queued=1)
    assert replayed.id == keyed.id and not created


def test_queue_position_counts_older_queued_jobs(store: JobStore) -> None:
    jobs = []
    for _ in range(3):
        jobs.append(submit(store)[0])
        time.sleep(0.002)
    assert [store.queue_position(job) for job in jobs] == [1, 2, 3]
    lease = store.claim(jobs[0].id, worker="w", lease_seconds=60)
    assert lease is not None
    assert store.queue_position(store.get(jobs[0].id)) is None
    assert store.queue_position(store.get(jobs[2].id)) == 2


def test_the_queue_summary_counts_waiting_jobs_and_dates_the_oldest(store: JobStore) -> None:
    empty = store.queue_summary()
    assert (empty.queued, empty.oldest_created_at) == (0, None)
    assert empty.oldest_age_seconds(utcnow()) == 0.0
    jobs = []
    for _ in range(3):
        jobs.append(submit(store)[0])
        time.sleep(0.002)
    summary = store.queue_summary()
    assert summary.queued == 3 and summary.oldest_created_at == jobs[0].created_at
    later = jobs[0].created_at + timedelta(minutes=20)
    assert summary.oldest_age_seconds(later) == pytest.approx(1200.0)
    # A running job and a canceled one no longer wait: the third is now the oldest.
    lease = store.claim(jobs[0].id, worker="w", lease_seconds=60)
    assert lease is not None
    store.request_cancel(jobs[1].id, owner="k1")
    summary = store.queue_summary()
    assert summary.queued == 1 and summary.oldest_created_at == jobs[2].created_at
    # Given back for a retry, a job waits again, dated by its submission: its client has
    # waited for images since then.
    assert store.release(lease)
    summary = store.queue_summary()
    assert summary.queued == 2 and summary.oldest_created_at == jobs[0].created_at


def test_one_claim_wins_and_a_live_lease_blocks_others(store: JobStore) -> None:
    job, _ = submit(store)
    with ThreadPoolExecutor(4) as pool:
        leases = list(
            pool.map(lambda n: store.claim(job.id, worker=f"w{n}", lease_seconds=60), range(8))
        )
    won = [lease for lease in leases if lease is not None]
    assert len(won) == 1
    assert won[0].job.state is JobState.RUNNING and won[0].job.attempts == 1


def test_an_expired_lease_lets_a_redelivery_run_the_job_and_fences_the_old_one(
    store: JobStore,
) -> None:
    job, _ = submit(store)
    dead = store.claim(job.id, worker="dead", lease_seconds=0.01)
    assert dead is not None
    time.sleep(0.05)
    assert store.jobs_to_publish(unpublished_for=0.0) == [job.id]
    alive = store.claim(job.id, worker="alive", lease_seconds=60)
    assert alive is not None and alive.job.attempts == 2
    # The dead worker's late completion must not count: only the current lease can finish.
    assert not store.complete(dead, outcome=outcome(), images=images())
    assert store.complete(alive, outcome=outcome(), images=images())
    assert [image.rank for image in store.images(job.id)] == [1, 2]
    # A third delivery after success does nothing.
    assert store.claim(job.id, worker="late", lease_seconds=60) is None


def test_a_job_whose_workers_keep_dying_fails_as_worker_lost(store: JobStore) -> None:
    job, _ = submit(store)
    for attempt in (1, 2):
        lease = store.claim(job.id, worker=f"dead{attempt}", lease_seconds=0.01, max_attempts=2)
        assert lease is not None and lease.job.attempts == attempt
        time.sleep(0.05)
    # The second dead worker used the last start: a redelivery fails the job, never runs it.
    assert store.claim(job.id, worker="next", lease_seconds=60, max_attempts=2) is None
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error is not None and failed.error.type == "worker_lost"
    assert "2 times" in failed.error.message
    assert store.jobs_to_publish(unpublished_for=0.0) == []


def test_fail_lost_spares_live_leases_starts_left_and_cancels(store: JobStore) -> None:
    live, _ = submit(store)
    orphan, _ = submit(store)
    canceled, _ = submit(store)
    assert store.claim(live.id, worker="w", lease_seconds=60) is not None
    assert store.claim(orphan.id, worker="dead", lease_seconds=0.01) is not None
    assert store.claim(canceled.id, worker="dead", lease_seconds=0.01) is not None
    store.request_cancel(canceled.id, owner="k1")
    time.sleep(0.05)
    assert store.fail_lost(max_attempts=2) == 0  # one start each: a second one is left
    assert store.fail_lost(max_attempts=1) == 1  # the orphan's only start is spent
    assert store.get(orphan.id).state is JobState.FAILED
    assert store.get(live.id).state is JobState.RUNNING  # its worker is alive
    assert store.cancel_orphans() == 1  # a cancel the dead worker never saw stays a cancel
    assert store.get(canceled.id).state is JobState.CANCELED


def test_completion_records_outcome_and_images_once(store: JobStore) -> None:
    job, _ = submit(store)
    lease = store.claim(job.id, worker="w", lease_seconds=60)
    assert lease is not None
    assert store.complete(lease, outcome=outcome(), images=images())
    assert not store.complete(lease, outcome=outcome(), images=images())
    done = store.get(job.id)
    assert done.state is JobState.SUCCEEDED and done.finished_at is not None
    assert done.outcome == outcome()
    stored = store.images(job.id)
    assert len(stored) == 2 and stored[0].id == f"{job.id}-1"
    assert store.image(stored[0].id, owner="k1").breakdown == {"colors": 0.5}
    with pytest.raises(NotFound):
        store.image(stored[0].id, owner="someone-else")


def test_failure_is_recorded_with_its_type(store: JobStore) -> None:
    job, _ = submit(store)
    lease = store.claim(job.id, worker="w", lease_seconds=60)
    assert lease is not None
    assert store.fail(lease, JobError(type="upstream_error", message="describer down"))
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error == JobError(type="upstream_error", message="describer down")


def test_release_puts_a_job_back_in_the_queue(store: JobStore) -> None:
    job, _ = submit(store)
    lease = store.claim(job.id, worker="w", lease_seconds=60)
    store.mark_published(job.id)
    assert lease is not None and store.release(lease)
    assert store.get(job.id).state is JobState.QUEUED
    # Unsent again: if the retry's message is lost, the sweeper sends the job.
    assert store.get(job.id).published_at is None
    again = store.claim(job.id, worker="w", lease_seconds=60)
    assert again is not None and again.job.attempts == 2


def test_cancel_while_queued_is_immediate_and_no_worker_runs_it(store: JobStore) -> None:
    job, _ = submit(store)
    canceled = store.request_cancel(job.id, owner="k1")
    assert canceled.state is JobState.CANCELED and canceled.finished_at is not None
    assert store.claim(job.id, worker="w", lease_seconds=60) is None
    # Cancelling twice is fine; another owner cannot see the job at all.
    assert store.request_cancel(job.id, owner="k1").state is JobState.CANCELED
    with pytest.raises(NotFound):
        store.request_cancel(job.id, owner="k2")


def test_cancel_while_running_asks_the_worker(store: JobStore) -> None:
    job, _ = submit(store)
    lease = store.claim(job.id, worker="w", lease_seconds=60)
    assert lease is not None and not store.cancel_requested(job.id)
    assert store.request_cancel(job.id, owner="k1").state is JobState.RUNNING
    assert store.cancel_requested(job.id)
    assert store.finish_canceled(lease)
    assert store.get(job.id).state is JobState.CANCELED


def test_a_finished_job_cannot_be_canceled(store: JobStore) -> None:
    job, _ = submit(store)
    lease = store.claim(job.id, worker="w", lease_seconds=60)
    assert lease is not None and store.complete(lease, outcome=outcome(), images=images())
    with pytest.raises(Conflict):
        store.request_cancel(job.id, owner="k1")


def test_a_canceled_job_whose_worker_died_is_closed_by_the_sweeper(store: JobStore) -> None:
    job, _ = submit(store)
    assert store.claim(job.id, worker="dead", lease_seconds=0.01) is not None
    store.request_cancel(job.id, owner="k1")
    time.sleep(0.05)
    assert store.jobs_to_publish(unpublished_for=0.0) == []
    assert store.cancel_orphans() == 1
    assert store.get(job.id).state is JobState.CANCELED


def test_jobs_to_publish_finds_unsent_jobs_and_all_queued_after_a_broker_loss(
    store: JobStore,
) -> None:
    sent, _ = submit(store)
    unsent, _ = submit(store)
    store.mark_published(sent.id)
    assert store.jobs_to_publish(unpublished_for=3600) == []
    assert store.jobs_to_publish(unpublished_for=0.0) == [unsent.id]
    assert store.jobs_to_publish(unpublished_for=3600, all_queued=True) == [sent.id, unsent.id]
    # Once re-sent, it is not sent again on every sweep.
    store.mark_published(unsent.id)
    assert store.jobs_to_publish(unpublished_for=3600) == []


def test_a_queued_job_whose_message_went_stale_is_sent_again(store: JobStore) -> None:
    job, _ = submit(store)
    store.mark_published(job.id)
    assert store.jobs_to_publish(unpublished_for=3600, stale_after=3600) == []
    time.sleep(0.05)
    assert store.jobs_to_publish(unpublished_for=3600, stale_after=0.01) == [job.id]
    store.mark_published(job.id)  # sent again: stale only once more after stale_after
    assert store.jobs_to_publish(unpublished_for=3600, stale_after=3600) == []


def test_the_stored_request_round_trips(store: JobStore) -> None:
    job, _ = submit(store)
    assert store.get(job.id).request == make_request()
    assert json.loads(store.get(job.id).request.model_dump_json())["seed"] == 7
