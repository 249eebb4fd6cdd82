"""Leased rows: the exactly-once protocol that generation jobs and training runs share.

A row is saved before its task is sent; a worker starts it with one conditional UPDATE that
hands it a *lease* (a token and an expiry), and only the holder of the current lease can
finish it. A lease that runs out (its worker died) lets the next delivery claim the row again,
until ``max_attempts`` starts; then the row is failed as ``worker_lost``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
    Integer,
    String,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from services.common.db import Base
from services.common.errors import WorkerLost

_FIRST = -1
_LEASE_COLUMNS = 1
AFTER_LEASE_COLUMNS = 2
"""``sort_order`` of a table's own columns that come after the lease columns and before the
error columns (see ``LeasedRow``); its other own columns (order 0) come right after ``id``."""
_ERROR_COLUMNS = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime (None stays None)."""
    # SQLite hands back naive datetimes even for timezone=True columns; they are UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class LeasedRow(Base):
    """The columns of a row that workers run under a lease, declared once for each table.

    The ``sort_order`` values keep each table's CREATE TABLE column order as it always was
    (there is no migration tool: the schema must not change): ``id``, the table's own leading
    columns, the lease columns, its ``AFTER_LEASE_COLUMNS`` ones, then the error columns.
    """

    __abstract__ = True

    id: Mapped[str] = mapped_column(String(32), primary_key=True, sort_order=_FIRST)
    # "queued" is the QUEUED value of every LeaseStates enum.
    state: Mapped[str] = mapped_column(
        String(16), index=True, default="queued", sort_order=_LEASE_COLUMNS
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, sort_order=_LEASE_COLUMNS
    )
    published_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True),
        default=None,
        sort_order=_LEASE_COLUMNS,
        doc="Last time its task was sent to the broker.",
    )
    started_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None, sort_order=_LEASE_COLUMNS
    )
    finished_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None, sort_order=_LEASE_COLUMNS
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, sort_order=_LEASE_COLUMNS)
    lease_token: Mapped[str | None] = mapped_column(
        String(32), default=None, sort_order=_LEASE_COLUMNS
    )
    lease_until: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None, sort_order=_LEASE_COLUMNS
    )
    worker: Mapped[str | None] = mapped_column(String(255), default=None, sort_order=_LEASE_COLUMNS)
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, default=False, sort_order=_LEASE_COLUMNS
    )
    error_type: Mapped[str | None] = mapped_column(
        String(64), default=None, sort_order=_ERROR_COLUMNS
    )
    error_message: Mapped[str | None] = mapped_column(Text, default=None, sort_order=_ERROR_COLUMNS)


class LeaseStates(Protocol):
    """The states a leased row moves through (an enum such as ``JobState``)."""

    @property
    def QUEUED(self) -> StrEnum: ...

    @property
    def RUNNING(self) -> StrEnum: ...

    @property
    def FAILED(self) -> StrEnum: ...

    @property
    def CANCELED(self) -> StrEnum: ...


class LeasedTable:
    """Every lease-keeping statement on one table of ``LeasedRow``s.

    Each method runs in the caller's session, so a store decides what commits together
    (a job's images and its completion, for one).
    """

    def __init__(self, row: type[LeasedRow], states: LeaseStates) -> None:
        self._row = row
        self._queued = states.QUEUED.value
        self._running = states.RUNNING.value
        self._failed = states.FAILED.value
        self._canceled = states.CANCELED.value

    # --- sending ------------------------------------------------------------------------

    def mark_published(self, session: Session, row_id: str) -> None:
        row = self._row
        session.execute(update(row).where(row.id == row_id).values(published_at=utcnow()))

    def never_sent(self, cutoff: datetime) -> ColumnElement[bool]:
        """Queued, created before ``cutoff`` and never sent: the sender died in between."""
        row = self._row
        return (row.state == self._queued) & row.published_at.is_(None) & (row.created_at < cutoff)

    def lease_expired(self, now: datetime) -> ColumnElement[bool]:
        """Running under a lease that ran out by ``now``: its worker died."""
        row = self._row
        return (row.state == self._running) & (row.lease_until < now)

    # --- the worker's side --------------------------------------------------------------

    def claim(
        self,
        session: Session,
        row_id: str,
        *,
        worker: str,
        lease_seconds: float,
        max_attempts: int,
        keep_first_start: bool,
    ) -> str | None:
        """Start a queued row, or take over one whose lease ran out: its new lease token.

        None when it is not ours: finished, canceled, running under a live lease, or started
        ``max_attempts`` times already. ``keep_first_start`` leaves ``started_at`` at the
        first start instead of this one.
        """
        row = self._row
        now = utcnow()
        token = secrets.token_hex(16)
        claimed = session.execute(
            update(row)
            .where(
                row.id == row_id,
                row.cancel_requested.is_(False),
                row.attempts < max_attempts,
                (row.state == self._queued) | self.lease_expired(now),
            )
            .values(
                state=self._running,
                attempts=row.attempts + 1,
                lease_token=token,
                lease_until=now + timedelta(seconds=lease_seconds),
                worker=worker[:255],
                started_at=func.coalesce(row.started_at, now) if keep_first_start else now,
            )
        ).rowcount  # type: ignore[attr-defined]
        return token if claimed == 1 else None

    def renew(self, session: Session, row_id: str, token: str, *, lease_seconds: float) -> bool:
        """Keep the lease alive; False when it was lost (taken over, canceled, finished)."""
        row = self._row
        renewed = session.execute(
            update(row)
            .where(row.id == row_id, row.lease_token == token, row.state == self._running)
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        ).rowcount  # type: ignore[attr-defined]
        return bool(renewed == 1)

    def release(self, session: Session, row_id: str, token: str) -> bool:
        """Give the row back to the queue, as unsent: should the retry's message never reach
        the broker, the sweeper sends it again (a duplicate is harmless)."""
        row = self._row
        released = session.execute(
            update(row)
            .where(row.id == row_id, row.lease_token == token)
            .values(state=self._queued, lease_token=None, lease_until=None, published_at=None)
        ).rowcount  # type: ignore[attr-defined]
        return bool(released == 1)

    def finish(
        self, session: Session, row_id: str, token: str, state: StrEnum, **values: Any
    ) -> bool:
        """Move the row to ``state`` with ``values``; False unless ``token`` holds its lease."""
        row = self._row
        finished = session.execute(
            update(row)
            .where(row.id == row_id, row.lease_token == token, row.state == self._running)
            .values(state=state.value, finished_at=utcnow(), lease_until=None, **values)
        ).rowcount  # type: ignore[attr-defined]
        return bool(finished == 1)

    # --- canceling ----------------------------------------------------------------------

    def request_cancel(self, session: Session, row_id: str, *, flag_any_state: bool) -> None:
        """Cancel the row at once if queued; else flag it, for its worker to stop.

        The flag goes on a running row only, or with ``flag_any_state`` on the row whatever
        its state (a row finished since the caller looked keeps its final state either way).
        """
        row = self._row
        session.execute(
            update(row)
            .where(row.id == row_id, row.state == self._queued)
            .values(state=self._canceled, finished_at=utcnow(), cancel_requested=True)
        )
        flag = update(row).where(row.id == row_id)
        if not flag_any_state:
            flag = flag.where(row.state == self._running)
        session.execute(flag.values(cancel_requested=True))

    def cancel_requested(self, session: Session, row_id: str) -> bool:
        row = self._row
        return bool(session.scalar(select(row.cancel_requested).where(row.id == row_id)))

    # --- the sweeper's side -------------------------------------------------------------

    def fail_worker_lost(
        self,
        session: Session,
        *where: ColumnElement[bool],
        now: datetime,
        max_attempts: int,
        message: str,
        **values: Any,
    ) -> int:
        """Fail, as ``worker_lost``, the rows (matching ``where``) whose lease ran out after
        their ``max_attempts``-th start: their worker died each time, and sending them again
        would only kill the next one. Returns how many were failed."""
        row = self._row
        failed = session.execute(
            update(row)
            .where(self.lease_expired(now), row.attempts >= max_attempts, *where)
            .values(
                state=self._failed,
                finished_at=now,
                lease_until=None,
                error_type=WorkerLost.type,
                error_message=message,
                **values,
            )
        ).rowcount  # type: ignore[attr-defined]
        return int(failed or 0)

    def cancel_orphans(self, session: Session, *, now: datetime) -> int:
        """Cancel the rows asked to cancel whose worker died: nobody will stop them but us."""
        row = self._row
        canceled = session.execute(
            update(row)
            .where(self.lease_expired(now), row.cancel_requested.is_(True))
            .values(state=self._canceled, finished_at=now, lease_until=None)
        ).rowcount  # type: ignore[attr-defined]
        return int(canceled or 0)
