"""The lease protocol shared by generation jobs and training runs: one schema that must not
move (there are no migrations), and the places where the two stores differ on purpose.

Runs on SQLite and on the real PostgreSQL (marked), like every store test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from services.common.contracts import Context, GenerateRequest, JobState
from services.common.db import Database
from services.common.jobs import JobRow, JobStore, request_hash
from services.common.leases import aware
from services.trainer.runs import RunState, TrainingRunRow, TrainingStore

LEASE_COLUMNS = [
    "state",
    "created_at",
    "published_at",
    "started_at",
    "finished_at",
    "attempts",
    "lease_token",
    "lease_until",
    "worker",
    "cancel_requested",
]


def submit_job(store: JobStore) -> str:
    job, _ = store.submit(
        owner="k1",
        request=GenerateRequest(context=Context(account="acme", text="summer sale"), seed=7),
        body_hash=request_hash(b'{"context": {"account": "acme", "text": "summer sale"}}'),
        idempotency_key=None,
        max_queued=10,
        retry_after_seconds=5,
    )
    return job.id


def die_twice(claim: Callable[..., object]) -> None:
    """Two starts (of two allowed) whose worker dies at once: the lease runs out unrenewed."""
    for _ in range(2):
        assert claim(worker="w", lease_seconds=0.01, max_attempts=2) is not None
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("row", "own_first", "own_after_lease"),
    [
        (JobRow, ["owner", "idempotency_key", "request_hash", "request_json"], ["outcome_json"]),
        (TrainingRunRow, ["kind", "params_json"], ["progress_json", "result_json"]),
    ],
)
def test_the_leased_tables_keep_the_column_order_existing_databases_have(
    row: type[JobRow] | type[TrainingRunRow], own_first: list[str], own_after_lease: list[str]
) -> None:
    ddl = str(CreateTable(row.__table__).compile(dialect=postgresql.dialect()))
    columns = [line.split()[0] for line in ddl.splitlines()[2:] if line.startswith("\t")]
    expected = ["id", *own_first, *LEASE_COLUMNS, *own_after_lease, "error_type", "error_message"]
    assert columns[: len(expected)] == expected
    assert "state VARCHAR(16) NOT NULL" in ddl and "lease_until TIMESTAMP WITH TIME ZONE" in ddl
    assert {index.name for index in row.__table__.indexes} >= {f"ix_{row.__tablename__}_state"}


def test_a_naive_moment_from_sqlite_is_read_as_utc() -> None:
    naive = datetime(2026, 12, 1, 9, 30)
    assert aware(naive) == naive.replace(tzinfo=UTC)
    elsewhere = datetime(2026, 12, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    assert aware(elsewhere) is elsewhere
    assert aware(None) is None


def test_a_job_shows_its_first_start_and_a_run_its_latest(database: Database) -> None:
    jobs = JobStore(database)
    job_id = submit_job(jobs)
    first = jobs.claim(job_id, worker="a", lease_seconds=0.01)
    time.sleep(0.05)
    again = jobs.claim(job_id, worker="b", lease_seconds=60)
    assert first is not None and again is not None
    assert again.job.started_at == first.job.started_at

    runs = TrainingStore(database)
    run_id = runs.submit("boigsd", {}).id
    started = runs.claim(run_id, worker="a", lease_seconds=0.01)
    time.sleep(0.05)
    resumed = runs.claim(run_id, worker="b", lease_seconds=60)
    assert started is not None and resumed is not None
    assert started.run.started_at is not None and resumed.run.started_at is not None
    assert resumed.run.started_at > started.run.started_at


def test_a_refused_job_claim_fails_that_job_only_a_refused_run_claim_every_lost_run(
    database: Database,
) -> None:
    jobs = JobStore(database)
    doomed, bystander = submit_job(jobs), submit_job(jobs)
    for job_id in (doomed, bystander):
        die_twice(partial(jobs.claim, job_id))
    assert jobs.claim(doomed, worker="w", lease_seconds=60, max_attempts=2) is None
    assert jobs.get(doomed).state is JobState.FAILED
    assert jobs.get(bystander).state is JobState.RUNNING  # the sweeper's fail_lost takes it

    runs = TrainingStore(database)
    first, second = runs.submit("boigsd", {}).id, runs.submit("boigsd", {}).id
    for run_id in (first, second):
        die_twice(partial(runs.claim, run_id))
    assert runs.claim(first, worker="w", lease_seconds=60, max_attempts=2) is None
    assert runs.get(first).state is RunState.FAILED
    assert runs.get(second).state is RunState.FAILED


def test_a_lost_job_asked_to_cancel_is_canceled_a_lost_run_out_of_starts_fails(
    database: Database,
) -> None:
    jobs = JobStore(database)
    job_id = submit_job(jobs)
    die_twice(partial(jobs.claim, job_id))
    # The last worker died before it saw the cancel: it is still a cancel, not a failure.
    jobs.request_cancel(job_id, owner="k1")
    assert jobs.fail_lost(max_attempts=2) == 0
    assert jobs.cancel_orphans() == 1
    assert jobs.get(job_id).state is JobState.CANCELED

    runs = TrainingStore(database)
    run_id = runs.submit("boigsd", {}).id
    die_twice(partial(runs.claim, run_id))
    runs.cancel(run_id)
    assert runs.fail_lost(max_attempts=2) == 1
    lost = runs.get(run_id)
    assert lost.state is RunState.FAILED and lost.error_type == "worker_lost"
