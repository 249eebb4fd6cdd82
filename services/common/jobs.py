"""Generation jobs and their images in the SQL store: the durable record both sides share.

The gateway creates jobs (with idempotency and backpressure) and reads them; the worker
claims, finishes, fails or cancels them. Every change of state is one conditional UPDATE, so
two deliveries of the same task can never both run a job or both record its images: a worker
holds a *lease* (``services.common.leases``) while it runs a job, and only the holder of the
current lease can finish it. A lease that expires (its worker died) lets the next delivery
claim the job again. The Celery message carries only the job id; everything else is here.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from services.common.contracts import (
    FINAL_STATES,
    GenerateRequest,
    JobError,
    JobOutcome,
    JobState,
)
from services.common.db import Base, Database
from services.common.errors import Conflict, NotFound, Overloaded, RateLimited
from services.common.leases import AFTER_LEASE_COLUMNS, LeasedRow, LeasedTable, aware
from services.common.leases import utcnow as utcnow

DEFAULT_MAX_ATTEMPTS = 5
"""Starts a job gets: every claim counts, a transient error's retry included, so this must
exceed the worker's transient retries (``GeneratorSettings`` checks it)."""


class JobRow(LeasedRow):
    __tablename__ = "generation_jobs"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_job_idempotency"),)

    owner: Mapped[str] = mapped_column(String(64), index=True, doc="API key prefix.")
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str] = mapped_column(String(64), doc="SHA-256 of the client's body.")
    request_json: Mapped[str] = mapped_column(Text, doc="The request, seed resolved.")
    outcome_json: Mapped[str | None] = mapped_column(
        Text, default=None, sort_order=AFTER_LEASE_COLUMNS
    )


class ImageRow(Base):
    __tablename__ = "generated_images"
    __table_args__ = (UniqueConstraint("job_id", "rank", name="uq_image_rank"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("generation_jobs.id"), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    artifact_key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    reward: Mapped[float | None] = mapped_column(Float, default=None)
    breakdown_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class Job:
    """A job as read from the store (detached from any session)."""

    id: str
    owner: str
    state: JobState
    request: GenerateRequest
    created_at: datetime
    published_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    lease_token: str | None
    lease_until: datetime | None
    cancel_requested: bool
    outcome: JobOutcome | None
    error: JobError | None


@dataclass(frozen=True)
class NewImage:
    """An image the worker made, already written to the artifact store."""

    rank: int
    seed: int
    width: int
    height: int
    artifact_key: str
    sha256: str
    reward: float | None
    breakdown: dict[str, float]


@dataclass(frozen=True)
class StoredImage(NewImage):
    """An image as recorded: which job made it and whose it is."""

    id: str
    job_id: str
    owner: str


@dataclass(frozen=True)
class PurgedJobs:
    job_ids: list[str]
    artifact_keys: list[str]
    """Files no remaining image refers to, to delete once the rows are gone."""


@dataclass(frozen=True)
class QueueSummary:
    """The queue at one moment: how many jobs wait, and since when the oldest one has."""

    queued: int
    oldest_created_at: datetime | None
    """Submission time of the oldest queued job; a job given back for a transient retry
    keeps its first one. None while nothing is queued."""

    def oldest_age_seconds(self, now: datetime) -> float:
        """How long the oldest queued job has waited for its images, at ``now``; 0 when none."""
        if self.oldest_created_at is None:
            return 0.0
        return max(0.0, (now - self.oldest_created_at).total_seconds())


@dataclass(frozen=True)
class Lease:
    job: Job
    token: str


def request_hash(body: bytes) -> str:
    """The fingerprint an idempotency key is bound to: the canonical JSON of the request."""
    canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def image_id(job_id: str, rank: int) -> str:
    # Deterministic: a redelivered job that gets as far as recording images again would
    # collide on the primary key instead of adding a second copy.
    return f"{job_id}-{rank}"


def _job(row: JobRow) -> Job:
    outcome = JobOutcome.model_validate_json(row.outcome_json) if row.outcome_json else None
    error = (
        JobError(type=row.error_type, message=row.error_message or "") if row.error_type else None
    )
    return Job(
        id=row.id,
        owner=row.owner,
        state=JobState(row.state),
        request=GenerateRequest.model_validate_json(row.request_json),
        created_at=aware(row.created_at) or utcnow(),
        published_at=aware(row.published_at),
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
        attempts=row.attempts,
        lease_token=row.lease_token,
        lease_until=aware(row.lease_until),
        cancel_requested=row.cancel_requested,
        outcome=outcome,
        error=error,
    )


def _image(row: ImageRow) -> StoredImage:
    return StoredImage(
        id=row.id,
        job_id=row.job_id,
        owner=row.owner,
        rank=row.rank,
        seed=row.seed,
        width=row.width,
        height=row.height,
        artifact_key=row.artifact_key,
        sha256=row.sha256,
        reward=row.reward,
        breakdown=json.loads(row.breakdown_json),
    )


class JobStore:
    """Every read and state change of generation jobs."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._leases = LeasedTable(JobRow, JobState)

    # --- the gateway's side -------------------------------------------------------------

    def submit(
        self,
        *,
        owner: str,
        request: GenerateRequest,
        body_hash: str,
        idempotency_key: str | None,
        max_queued: int,
        retry_after_seconds: float,
        max_queued_per_owner: int | None = None,
    ) -> tuple[Job, bool]:
        """Create a queued job, or return the one this idempotency key already made.

        Returns ``(job, created)``. The same key with another body is a Conflict; a queue
        longer than ``max_queued`` is Overloaded, and ``max_queued_per_owner`` queued jobs of
        this owner RateLimited (both checked before creating, so a retried request with a
        known key is answered even when the queue is full).
        """
        if idempotency_key is not None:
            existing = self._by_idempotency_key(owner, idempotency_key)
            if existing is not None:
                return self._same_body(existing, body_hash), False
        if self.queued_count() >= max_queued:
            raise Overloaded(
                f"the generation queue holds {max_queued} or more jobs; retry later",
                retry_after=retry_after_seconds,
            )
        if max_queued_per_owner is not None and self.queued_count(owner) >= max_queued_per_owner:
            raise RateLimited(
                f"this key has {max_queued_per_owner} or more jobs waiting in the queue; "
                "retry when one has started",
                retry_after=retry_after_seconds,
            )
        row = JobRow(
            id=secrets.token_hex(16),
            owner=owner,
            idempotency_key=idempotency_key,
            request_hash=body_hash,
            request_json=request.model_dump_json(),
            state=JobState.QUEUED.value,
            created_at=utcnow(),
        )
        try:
            with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            # Two requests with one key raced; the other one won and its job stands.
            if idempotency_key is None:
                raise
            existing = self._by_idempotency_key(owner, idempotency_key)
            if existing is None:
                raise
            return self._same_body(existing, body_hash), False
        return _job(row), True

    def _by_idempotency_key(self, owner: str, key: str) -> JobRow | None:
        with self._db.session() as session:
            return session.scalars(
                select(JobRow).where(JobRow.owner == owner, JobRow.idempotency_key == key)
            ).one_or_none()

    @staticmethod
    def _same_body(row: JobRow, body_hash: str) -> Job:
        if row.request_hash != body_hash:
            raise Conflict(
                "this Idempotency-Key was used with a different request body; use a new key "
                "for a new request"
            )
        return _job(row)

    def mark_published(self, job_id: str) -> None:
        with self._db.session() as session:
            self._leases.mark_published(session, job_id)

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job; another owner's job is NotFound, exactly like a job that does not exist."""
        with self._db.session() as session:
            row = session.get(JobRow, job_id)
            if row is None or (owner is not None and row.owner != owner):
                raise NotFound(f"no job {job_id!r}")
            return _job(row)

    def queued_count(self, owner: str | None = None) -> int:
        """Jobs waiting in the queue, all of them or ``owner``'s."""
        condition = JobRow.state == JobState.QUEUED.value
        if owner is not None:
            condition = condition & (JobRow.owner == owner)
        with self._db.session() as session:
            return int(
                session.scalar(select(func.count()).select_from(JobRow).where(condition)) or 0
            )

    def queue_summary(self) -> QueueSummary:
        """Length of the queue and submission time of its oldest job, in one query.

        Cheap at any table size: the ``state`` index finds the queued rows, and the gateway
        holds them to ``max_queued_jobs``.
        """
        with self._db.session() as session:
            queued, oldest = session.execute(
                select(func.count(), func.min(JobRow.created_at)).where(
                    JobRow.state == JobState.QUEUED.value
                )
            ).one()
        return QueueSummary(queued=int(queued or 0), oldest_created_at=aware(oldest))

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to start; None unless the job is queued."""
        if job.state is not JobState.QUEUED:
            return None
        with self._db.session() as session:
            ahead = session.scalar(
                select(func.count())
                .select_from(JobRow)
                .where(JobRow.state == JobState.QUEUED.value, JobRow.created_at < job.created_at)
            )
        return int(ahead or 0) + 1

    def request_cancel(self, job_id: str, *, owner: str) -> Job:
        """Cancel a queued job at once; ask a running one to stop at its next step."""
        job = self.get(job_id, owner=owner)
        if job.state is JobState.CANCELED:
            return job
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} already {job.state.value}; nothing to cancel")
        with self._db.session() as session:
            self._leases.request_cancel(session, job_id, flag_any_state=False)
        return self.get(job_id)

    def images(self, job_id: str) -> list[StoredImage]:
        with self._db.session() as session:
            rows = session.scalars(
                select(ImageRow).where(ImageRow.job_id == job_id).order_by(ImageRow.rank)
            ).all()
            return [_image(row) for row in rows]

    def image(self, image_id: str, *, owner: str) -> StoredImage:
        with self._db.session() as session:
            row = session.get(ImageRow, image_id)
            if row is None or row.owner != owner:
                raise NotFound(f"no image {image_id!r}")
            return _image(row)

    # --- the worker's side --------------------------------------------------------------

    def claim(
        self,
        job_id: str,
        *,
        worker: str,
        lease_seconds: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> Lease | None:
        """Start (or restart after a dead worker) a job; None if it is not ours to run.

        Not ours: it is finished, canceled, or running under another worker's live lease, or
        it was started ``max_attempts`` times already. A job whose worker died that often
        (the job itself may be what kills it) is failed here as ``worker_lost``.
        """
        with self._db.session() as session:
            # A job's started_at (shown to its client) is its first start, whatever the retries.
            token = self._leases.claim(
                session,
                job_id,
                worker=worker,
                lease_seconds=lease_seconds,
                max_attempts=max_attempts,
                keep_first_start=True,
            )
        if token is None:
            self.fail_lost(max_attempts=max_attempts, job_id=job_id)
            return None
        return Lease(job=self.get(job_id), token=token)

    def cancel_requested(self, job_id: str) -> bool:
        with self._db.session() as session:
            return self._leases.cancel_requested(session, job_id)

    def complete(self, lease: Lease, *, outcome: JobOutcome, images: Sequence[NewImage]) -> bool:
        """Record the images and the outcome in one transaction; False if the lease was lost."""
        with self._db.session() as session:
            done = self._leases.finish(
                session,
                lease.job.id,
                lease.token,
                JobState.SUCCEEDED,
                outcome_json=outcome.model_dump_json(),
            )
            if done:
                session.add_all(
                    ImageRow(
                        id=image_id(lease.job.id, image.rank),
                        job_id=lease.job.id,
                        owner=lease.job.owner,
                        rank=image.rank,
                        seed=image.seed,
                        width=image.width,
                        height=image.height,
                        artifact_key=image.artifact_key,
                        sha256=image.sha256,
                        reward=image.reward,
                        breakdown_json=json.dumps(image.breakdown),
                    )
                    for image in images
                )
        return done

    def fail(self, lease: Lease, error: JobError, *, outcome: JobOutcome | None = None) -> bool:
        with self._db.session() as session:
            return self._leases.finish(
                session,
                lease.job.id,
                lease.token,
                JobState.FAILED,
                error_type=error.type,
                error_message=error.message,
                outcome_json=outcome.model_dump_json() if outcome else None,
            )

    def finish_canceled(self, lease: Lease) -> bool:
        with self._db.session() as session:
            return self._leases.finish(session, lease.job.id, lease.token, JobState.CANCELED)

    def release(self, lease: Lease) -> bool:
        """Give a job back to the queue (a transient error; the task will be retried).

        It counts as unsent again: should the retry's message never reach the broker, the
        sweeper sends the job after its grace period (a duplicate is harmless).
        """
        with self._db.session() as session:
            return self._leases.release(session, lease.job.id, lease.token)

    # --- the sweeper's side -------------------------------------------------------------

    def jobs_to_publish(
        self,
        *,
        unpublished_for: float,
        all_queued: bool = False,
        stale_after: float | None = None,
    ) -> list[str]:
        """Jobs whose task may not be on the broker.

        Queued jobs never published (the gateway died between commit and send) for longer
        than ``unpublished_for`` seconds, running jobs whose lease ran out (their worker
        died and the broker may not hand the message out again), queued jobs last sent more
        than ``stale_after`` seconds ago (a worker gave the message up while the job store
        was down, or it was lost some other way: a duplicate is harmless, a lost one
        strands the job), and, when the broker lost its state (``all_queued``), every
        queued job.
        """
        now = utcnow()
        cutoff = now - timedelta(seconds=unpublished_for)
        queued = JobRow.state == JobState.QUEUED.value
        never_sent = self._leases.never_sent(cutoff)
        if stale_after is not None:
            stale = JobRow.published_at < now - timedelta(seconds=stale_after)
            never_sent = never_sent | (queued & stale)
        # Sent again at most once per ``unpublished_for``: with no worker up, a sweep must
        # not pile a new message onto the broker every time it runs.
        orphaned = self._leases.lease_expired(now) & (
            JobRow.published_at.is_(None) | (JobRow.published_at < cutoff)
        )
        condition = (queued | orphaned) if all_queued else (never_sent | orphaned)
        with self._db.session() as session:
            return list(
                session.scalars(
                    select(JobRow.id)
                    .where(condition, JobRow.cancel_requested.is_(False))
                    .order_by(JobRow.created_at)
                ).all()
            )

    def fail_lost(self, *, max_attempts: int, job_id: str | None = None) -> int:
        """Fail, as ``worker_lost``, the running jobs (or the one ``job_id``) whose lease ran
        out after their ``max_attempts``-th start: their worker died each time, and sending
        them again would only kill the next one. Returns how many were failed."""
        # A cancel the dead worker never saw is a cancel: cancel_orphans closes those.
        only: list[ColumnElement[bool]] = [JobRow.cancel_requested.is_(False)]
        if job_id is not None:
            only.append(JobRow.id == job_id)
        with self._db.session() as session:
            return self._leases.fail_worker_lost(
                session,
                *only,
                now=utcnow(),
                max_attempts=max_attempts,
                message=(
                    f"the worker running this job stopped {max_attempts} times before "
                    "it finished (killed for memory or crashed); it is not tried again"
                ),
                lease_token=None,
            )

    def cancel_orphans(self) -> int:
        """Running jobs asked to cancel whose worker died: nobody will stop them but us."""
        with self._db.session() as session:
            return self._leases.cancel_orphans(session, now=utcnow())

    # --- retention ----------------------------------------------------------------------

    def purge_finished(self, *, finished_before: datetime, limit: int = 500) -> PurgedJobs:
        """Delete up to ``limit`` finished jobs (succeeded, failed, canceled) that ended
        before ``finished_before``, with their image rows and idempotency keys.

        Returns the artifact keys that no remaining image refers to: the caller deletes the
        files after this commit, so a row never points at a deleted file.
        """
        finals = [state.value for state in FINAL_STATES]
        with self._db.session() as session:
            job_ids = list(
                session.scalars(
                    select(JobRow.id)
                    .where(JobRow.state.in_(finals), JobRow.finished_at < finished_before)
                    .order_by(JobRow.finished_at)
                    .limit(limit)
                )
            )
            if not job_ids:
                return PurgedJobs(job_ids=[], artifact_keys=[])
            keys = set(
                session.scalars(select(ImageRow.artifact_key).where(ImageRow.job_id.in_(job_ids)))
            )
            session.execute(delete(ImageRow).where(ImageRow.job_id.in_(job_ids)))
            session.execute(delete(JobRow).where(JobRow.id.in_(job_ids)))
            # Images are content-addressed: a kept job may hold the same bytes.
            shared = set(
                session.scalars(
                    select(ImageRow.artifact_key).where(ImageRow.artifact_key.in_(keys))
                )
            )
        return PurgedJobs(job_ids=job_ids, artifact_keys=sorted(keys - shared))
