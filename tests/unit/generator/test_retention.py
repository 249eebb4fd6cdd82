"""Retention deletes old finished jobs with their images and files, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from services.common.contracts import Context, GenerateRequest, JobState
from services.common.db import Database
from services.common.errors import NotFound
from services.common.jobs import JobRow, JobStore, NewImage
from services.common.storage import ArtifactStore, LocalArtifactStore
from services.generator.retention import JobRetention
from tests.artifact_stores import LONG_AGO, StoreUnderTest
from tests.job_records import outcome

DAY = timedelta(days=1)


def finished_job(
    store: JobStore, artifacts: ArtifactStore, pngs: list[bytes], *, key: str | None = None
) -> str:
    job, _ = store.submit(
        owner="k",
        request=GenerateRequest(context=Context(account="acme"), seed=1),
        body_hash=f"h-{key}",
        idempotency_key=key,
        max_queued=100,
        retry_after_seconds=1,
    )
    lease = store.claim(job.id, worker="w", lease_seconds=60)
    assert lease is not None
    images = []
    for rank, png in enumerate(pngs, start=1):
        ref = artifacts.put(png, namespace="generated", suffix=".png")
        images.append(
            NewImage(
                rank=rank,
                seed=rank,
                width=8,
                height=8,
                artifact_key=ref.key,
                sha256=ref.sha256,
                reward=0.1,
                breakdown={},
            )
        )
    assert store.complete(lease, outcome=outcome(), images=images)
    return job.id


def age(database: Database, job_id: str, days: float) -> None:
    with database.session() as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(finished_at=datetime.now(UTC) - timedelta(days=days))
        )


def test_old_finished_jobs_go_with_their_images_and_files(
    database: Database, artifact_backend: StoreUnderTest
) -> None:
    store, artifacts = JobStore(database), artifact_backend.store
    old = finished_job(store, artifacts, [b"old-1", b"old-2"], key="idem-old")
    shared = finished_job(store, artifacts, [b"shared"])
    keeper = finished_job(store, artifacts, [b"recent", b"shared"], key="idem-new")
    queued, _ = store.submit(
        owner="k",
        request=GenerateRequest(context=Context(account="acme"), seed=2),
        body_hash="q",
        idempotency_key=None,
        max_queued=100,
        retry_after_seconds=1,
    )
    for job_id in (old, shared):
        age(database, job_id, days=40)
    for name in artifact_backend.names():
        artifact_backend.backdate(name, LONG_AGO)  # files written within the hour stay
    old_files = [image.artifact_key for image in store.images(old)]
    kept_files = [image.artifact_key for image in store.images(keeper)]

    retention = JobRetention(store, artifacts, keep_for=30 * DAY, every=3600, batch=1)
    report = retention.run()

    assert (report.jobs, report.files) == (2, 2)  # the shared bytes stay for the kept job
    for gone in (old, shared):
        with pytest.raises(NotFound):
            store.get(gone)
    assert not any(artifacts.exists(key) for key in old_files)
    assert all(artifacts.exists(key) for key in kept_files)
    assert store.get(keeper).state is JobState.SUCCEEDED
    assert store.get(queued.id).state is JobState.QUEUED
    # The idempotency key went with its job: the same key is free for a new request.
    _, created = store.submit(
        owner="k",
        request=GenerateRequest(context=Context(account="acme"), seed=1),
        body_hash="other",
        idempotency_key="idem-old",
        max_queued=100,
        retry_after_seconds=1,
    )
    assert created
    assert retention.run().jobs == 0


def test_a_file_written_within_the_hour_stays(
    database: Database, artifact_backend: StoreUnderTest
) -> None:
    # Its image row may not be committed yet: another job stored the same bytes just now.
    store, artifacts = JobStore(database), artifact_backend.store
    old = finished_job(store, artifacts, [b"just-written"])
    age(database, old, days=40)
    key = store.images(old)[0].artifact_key
    report = JobRetention(store, artifacts, keep_for=30 * DAY, every=3600).run()
    assert (report.jobs, report.files) == (1, 0)
    assert artifacts.exists(key)


def test_retention_runs_once_per_interval(database: Database, tmp_path: Path) -> None:
    store, artifacts = JobStore(database), LocalArtifactStore(tmp_path)
    retention = JobRetention(store, artifacts, keep_for=DAY, every=3600)
    assert retention.run_if_due() is not None
    assert retention.run_if_due() is None
