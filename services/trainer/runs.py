"""Training runs as durable rows: a run is saved before its task is sent, started under a
lease that its worker keeps renewing, and resumed (from the run folder's checkpoints) by
another worker once a dead worker's lease runs out, until ``max_attempts`` starts.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Database
from services.common.errors import Conflict, NotFound
from services.common.leases import AFTER_LEASE_COLUMNS, LeasedRow, LeasedTable, aware
from services.common.leases import utcnow as utcnow

DEFAULT_MAX_ATTEMPTS = 5


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELED})


class TrainingRunRow(LeasedRow):
    __tablename__ = "training_runs"

    kind: Mapped[str] = mapped_column(String(32))
    params_json: Mapped[str] = mapped_column(Text)
    progress_json: Mapped[str | None] = mapped_column(
        Text, default=None, sort_order=AFTER_LEASE_COLUMNS
    )
    result_json: Mapped[str | None] = mapped_column(
        Text, default=None, sort_order=AFTER_LEASE_COLUMNS
    )


@dataclass(frozen=True)
class TrainingRun:
    id: str
    kind: str
    params: dict[str, Any]
    state: RunState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    worker: str | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True)
class RunLease:
    run: TrainingRun
    token: str


def _run(row: TrainingRunRow) -> TrainingRun:
    return TrainingRun(
        id=row.id,
        kind=row.kind,
        params=json.loads(row.params_json),
        state=RunState(row.state),
        created_at=aware(row.created_at) or utcnow(),
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
        attempts=row.attempts,
        worker=row.worker,
        cancel_requested=row.cancel_requested,
        progress=json.loads(row.progress_json) if row.progress_json else None,
        result=json.loads(row.result_json) if row.result_json else None,
        error_type=row.error_type,
        error_message=row.error_message,
    )


class TrainingStore:
    """Every read and state change of training runs."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._leases = LeasedTable(TrainingRunRow, RunState)

    @property
    def database(self) -> Database:
        """The database of the runs: the gateway's, which also holds feedback and decisions."""
        return self._db

    @classmethod
    def open(cls, database_url: str) -> TrainingStore:
        """The store at ``database_url``, its tables created if they are not there yet."""
        database = Database(database_url)
        database.create_schema()
        return cls(database)

    def submit(
        self, kind: str, params: dict[str, Any], *, run_id: str | None = None
    ) -> TrainingRun:
        """A queued run; ``run_id`` names it (a second submit of that id raises the
        database's IntegrityError), else a random id."""
        row = TrainingRunRow(
            id=run_id or secrets.token_hex(16),
            kind=kind,
            params_json=json.dumps(params, sort_keys=True),
            state=RunState.QUEUED.value,
            created_at=utcnow(),
        )
        with self._db.session() as session:
            session.add(row)
        return _run(row)

    def mark_published(self, run_id: str) -> None:
        with self._db.session() as session:
            self._leases.mark_published(session, run_id)

    def get(self, run_id: str) -> TrainingRun:
        with self._db.session() as session:
            row = session.get(TrainingRunRow, run_id)
            if row is None:
                raise NotFound(f"no training run {run_id!r}")
            return _run(row)

    def recent(self, limit: int = 20) -> list[TrainingRun]:
        with self._db.session() as session:
            rows = session.scalars(
                select(TrainingRunRow).order_by(TrainingRunRow.created_at.desc()).limit(limit)
            ).all()
            return [_run(row) for row in rows]

    def active(self, kind: str) -> bool:
        """A run of ``kind`` is queued or running."""
        with self._db.session() as session:
            found = session.scalars(
                select(TrainingRunRow.id)
                .where(
                    TrainingRunRow.kind == kind,
                    TrainingRunRow.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]),
                )
                .limit(1)
            ).first()
        return found is not None

    def cancel(self, run_id: str) -> TrainingRun:
        """A queued run is canceled at once; a running one stops after its current epoch."""
        run = self.get(run_id)
        if run.state in FINAL_STATES:
            raise Conflict(f"training run {run_id} already {run.state.value}")
        with self._db.session() as session:
            self._leases.request_cancel(session, run_id, flag_any_state=True)
        return self.get(run_id)

    # --- the worker's side --------------------------------------------------------------

    def claim(
        self,
        run_id: str,
        *,
        worker: str,
        lease_seconds: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> RunLease | None:
        """Start a queued run, or take over one whose worker's lease ran out; None when it is
        not ours (finished, canceled, live elsewhere, or out of attempts: then failed)."""
        with self._db.session() as session:
            token = self._leases.claim(
                session,
                run_id,
                worker=worker,
                lease_seconds=lease_seconds,
                max_attempts=max_attempts,
                keep_first_start=False,
            )
        if token is None:
            self.fail_lost(max_attempts=max_attempts)
            return None
        return RunLease(run=self.get(run_id), token=token)

    def renew(self, lease: RunLease, *, lease_seconds: float) -> bool:
        """Keep the lease alive; False when it was lost (taken over, canceled, finished)."""
        with self._db.session() as session:
            return self._leases.renew(
                session, lease.run.id, lease.token, lease_seconds=lease_seconds
            )

    def report(self, lease: RunLease, progress: dict[str, Any]) -> None:
        with self._db.session() as session:
            session.execute(
                update(TrainingRunRow)
                .where(TrainingRunRow.id == lease.run.id, TrainingRunRow.lease_token == lease.token)
                .values(progress_json=json.dumps(progress))
            )

    def cancel_requested(self, run_id: str) -> bool:
        with self._db.session() as session:
            return self._leases.cancel_requested(session, run_id)

    def complete(self, lease: RunLease, result: dict[str, Any]) -> bool:
        return self._finish(lease, RunState.SUCCEEDED, result_json=json.dumps(result))

    def fail(self, lease: RunLease, error_type: str, message: str) -> bool:
        return self._finish(lease, RunState.FAILED, error_type=error_type, error_message=message)

    def finish_canceled(self, lease: RunLease) -> bool:
        return self._finish(lease, RunState.CANCELED)

    def _finish(self, lease: RunLease, state: RunState, **values: object) -> bool:
        with self._db.session() as session:
            return self._leases.finish(session, lease.run.id, lease.token, state, **values)

    def runs_to_send(self, *, unpublished_for: float) -> list[str]:
        """Runs whose task may be missing: queued and never sent though ``unpublished_for``
        seconds old (the sender died between saving and sending), or running under a lease
        that ran out (their worker died; the next one resumes them), once per expiry.

        A queued run that was sent stays queued while the workers are busy with others: it
        is not sent again (its message waits in the broker)."""
        now = utcnow()
        with self._db.session() as session:
            return list(
                session.scalars(
                    select(TrainingRunRow.id).where(
                        TrainingRunRow.cancel_requested.is_(False),
                        self._leases.never_sent(now - timedelta(seconds=unpublished_for))
                        | (
                            self._leases.lease_expired(now)
                            # Once per expired lease: not again until someone claims it.
                            & (
                                TrainingRunRow.published_at.is_(None)
                                | (TrainingRunRow.published_at < TrainingRunRow.lease_until)
                            )
                        ),
                    )
                )
            )

    def fail_lost(self, *, max_attempts: int) -> int:
        """Fail the runs whose workers died ``max_attempts`` times (or orphaned cancels)."""
        now = utcnow()
        # One transaction; the failing comes first, so a run out of attempts fails even when
        # a cancel was asked for, and it keeps its lease token.
        with self._db.session() as session:
            failed = self._leases.fail_worker_lost(
                session,
                now=now,
                max_attempts=max_attempts,
                message=f"the worker stopped {max_attempts} times before the run ended",
            )
            self._leases.cancel_orphans(session, now=now)
        return failed
