"""KPI feedback in the SQL store: what a creative did once posted, one record per API key,
account, creative (its image's SHA-256) and KPI name.

The gateway records observations (the same one again is the same record; a different one is
a conflict unless sent as a correction) and lists them to their owner; the trainer reads an
account's records as ingest rows (``services.trainer.ingest.feedback``). A record keeps its
own copy of the image (artifact namespace ``feedback``), so the retention of generation jobs,
which deletes their images, never takes the file a record needs.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from services.common.contracts import Context, FeedbackRecord
from services.common.db import Base, Database, newest_first_page
from services.common.errors import Conflict, NotFound
from services.common.leases import aware, utcnow

FEEDBACK_NAMESPACE = "feedback"
"""Artifact namespace of the images feedback records keep."""

_RECORD_ATTEMPTS = 3
"""Reads of the record one observation may need: a lost race to insert it, or a correction
that found its own value already there, each answer on the next read."""


class FeedbackRow(Base):
    __tablename__ = "kpi_feedback"
    __table_args__ = (
        # What makes an observation a duplicate: idempotency and conflicts rest on it.
        UniqueConstraint(
            "owner", "account", "creative_sha256", "kpi_name", name="uq_feedback_creative_kpi"
        ),
        Index("ix_feedback_owner_seq", "owner", "seq"),
        Index("ix_feedback_account_posted", "account", "posted_at"),
    )

    seq: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=True, doc="Insertion order: pages follow it."
    )
    id: Mapped[str] = mapped_column(String(32), unique=True, doc="Public id.")
    owner: Mapped[str] = mapped_column(String(64), doc="API key prefix.")
    account: Mapped[str] = mapped_column(String(64))
    creative_sha256: Mapped[str] = mapped_column(String(64))
    kpi_name: Mapped[str] = mapped_column(String(32))
    kpi_value: Mapped[float] = mapped_column(Float)
    image_id: Mapped[str | None] = mapped_column(
        String(128),
        default=None,
        doc="The generated image it names; no foreign key: "
        "retention deletes image rows, feedback stays.",
    )
    artifact_key: Mapped[str] = mapped_column(String(200), doc="The record's copy of the image.")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    context_json: Mapped[str] = mapped_column(Text)
    posted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    fingerprint: Mapped[str] = mapped_column(
        String(64), doc="SHA-256 of the observation (context and value): what a replay matches."
    )
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RecordOutcome(StrEnum):
    CREATED = "created"
    REPLAYED = "replayed"
    """The same observation was recorded already: nothing changed."""
    CORRECTED = "corrected"
    """A correction replaced the recorded value or context."""


@dataclass(frozen=True)
class NewFeedback:
    """An observation to record; its image is in the artifact store already."""

    owner: str
    context: Context
    """Where and when it was posted; ``posted_at`` is set."""
    kpi_name: str
    kpi_value: float
    creative_sha256: str
    artifact_key: str
    width: int
    height: int
    image_id: str | None


@dataclass(frozen=True)
class Feedback(NewFeedback):
    """A recorded observation (detached from any session)."""

    id: str
    seq: int
    revision: int
    created_at: datetime
    updated_at: datetime

    @property
    def posted_at(self) -> datetime:
        assert self.context.posted_at is not None  # refused before it is recorded
        return self.context.posted_at

    def as_record(self) -> FeedbackRecord:
        return FeedbackRecord(
            id=self.id,
            creative_sha256=self.creative_sha256,
            image_id=self.image_id,
            context=self.context,
            kpi_name=self.kpi_name,
            kpi_value=self.kpi_value,
            revision=self.revision,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def observation_fingerprint(context: Context, kpi_value: float) -> str:
    """What a replay must repeat: the context and the value (the creative and KPI name are
    the record's key already)."""
    canonical = json.dumps(
        {"context": context.model_dump(mode="json"), "kpi_value": float(kpi_value)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _feedback(row: FeedbackRow) -> Feedback:
    created_at = aware(row.created_at) or utcnow()
    return Feedback(
        id=row.id,
        seq=row.seq,
        owner=row.owner,
        context=Context.model_validate_json(row.context_json),
        kpi_name=row.kpi_name,
        kpi_value=row.kpi_value,
        creative_sha256=row.creative_sha256,
        artifact_key=row.artifact_key,
        width=row.width,
        height=row.height,
        image_id=row.image_id,
        revision=row.revision,
        created_at=created_at,
        updated_at=aware(row.updated_at) or created_at,
    )


class FeedbackStore:
    """Every write and read of KPI feedback."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def record(self, new: NewFeedback, *, correction: bool) -> tuple[Feedback, RecordOutcome]:
        """Record an observation, idempotently per owner, account, creative and KPI name.

        The same context and value again: the recorded one (REPLAYED). Another context or
        value: Conflict, unless ``correction``, which replaces them (CORRECTED, revision + 1).
        """
        if new.context.posted_at is None:
            raise ValueError("feedback needs the post time (context.posted_at)")
        fingerprint = observation_fingerprint(new.context, new.kpi_value)
        for _ in range(_RECORD_ATTEMPTS):
            existing = self._find(new)
            if existing is None:
                created = self._insert(new, fingerprint)
                if created is not None:
                    return created, RecordOutcome.CREATED
                continue  # another request recorded it first: compare with theirs
            if existing.fingerprint == fingerprint:
                return _feedback(existing), RecordOutcome.REPLAYED
            if not correction:
                raise Conflict(_conflict_message(existing, new))
            corrected = self._correct(existing.seq, new, fingerprint)
            if corrected is not None:
                return corrected, RecordOutcome.CORRECTED
            # It holds this observation already (the same correction raced): a replay.
        raise Conflict(
            f"feedback for this creative's {new.kpi_name} on {new.context.account} kept "
            "changing while it was recorded; retry"
        )

    def _find(self, new: NewFeedback) -> FeedbackRow | None:
        with self._db.session() as session:
            return session.scalars(
                select(FeedbackRow).where(
                    FeedbackRow.owner == new.owner,
                    FeedbackRow.account == new.context.account,
                    FeedbackRow.creative_sha256 == new.creative_sha256,
                    FeedbackRow.kpi_name == new.kpi_name,
                )
            ).one_or_none()

    def _insert(self, new: NewFeedback, fingerprint: str) -> Feedback | None:
        """The new record, or None when a concurrent request inserted its key first."""
        now = utcnow()
        row = FeedbackRow(
            id=secrets.token_hex(16),
            owner=new.owner,
            account=new.context.account,
            creative_sha256=new.creative_sha256,
            kpi_name=new.kpi_name,
            kpi_value=new.kpi_value,
            image_id=new.image_id,
            artifact_key=new.artifact_key,
            width=new.width,
            height=new.height,
            context_json=new.context.model_dump_json(),
            posted_at=new.context.posted_at,
            fingerprint=fingerprint,
            revision=1,
            created_at=now,
            updated_at=now,
        )
        try:
            with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            return None
        return _feedback(row)

    def _correct(self, seq: int, new: NewFeedback, fingerprint: str) -> Feedback | None:
        """The corrected record; None when it holds this observation already."""
        values: dict[str, object] = {
            "kpi_value": new.kpi_value,
            "context_json": new.context.model_dump_json(),
            "posted_at": new.context.posted_at,
            "fingerprint": fingerprint,
            "artifact_key": new.artifact_key,
            "width": new.width,
            "height": new.height,
            "revision": FeedbackRow.revision + 1,
            "updated_at": utcnow(),
        }
        if new.image_id is not None:  # else the generated image it named stays named
            values["image_id"] = new.image_id
        with self._db.session() as session:
            # One statement, nothing read first: a correction replaces, so racing ones each
            # apply once and the last stands; one that finds its own observation there
            # (the same correction sent twice) changes nothing.
            changed = session.execute(
                update(FeedbackRow)
                .where(FeedbackRow.seq == seq, FeedbackRow.fingerprint != fingerprint)
                .values(values)
            ).rowcount  # type: ignore[attr-defined]
            if not changed:
                return None
            row = session.get(FeedbackRow, seq)
            assert row is not None
            return _feedback(row)

    def get(self, feedback_id: str, *, owner: str) -> Feedback:
        """The record; another owner's is NotFound, exactly like one that does not exist."""
        with self._db.session() as session:
            row = session.scalars(
                select(FeedbackRow).where(FeedbackRow.id == feedback_id)
            ).one_or_none()
            if row is None or row.owner != owner:
                raise NotFound(f"no feedback {feedback_id!r}")
            return _feedback(row)

    def page(
        self,
        *,
        owner: str,
        limit: int,
        before: int | None = None,
        account: str | None = None,
        kpi_name: str | None = None,
        creative_sha256: str | None = None,
    ) -> tuple[list[Feedback], int | None]:
        """Up to ``limit`` of ``owner``'s records, newest first, recorded before ``before``
        (a ``seq``); and the ``before`` of the next page, None when there is none."""
        query = select(FeedbackRow).where(FeedbackRow.owner == owner)
        if account is not None:
            query = query.where(FeedbackRow.account == account)
        if kpi_name is not None:
            query = query.where(FeedbackRow.kpi_name == kpi_name)
        if creative_sha256 is not None:
            query = query.where(FeedbackRow.creative_sha256 == creative_sha256)
        with self._db.session() as session:
            rows, next_before = newest_first_page(
                session, query, FeedbackRow.seq, limit=limit, before=before
            )
            return [_feedback(row) for row in rows], next_before

    def for_account(
        self,
        account: str,
        *,
        owners: Collection[str] | None = None,
        kpi_name: str | None = None,
        posted_since: datetime | None = None,
    ) -> list[Feedback]:
        """Every record of ``account`` (of ``owners`` only, when given), oldest post first:
        what the trainer folds into the account's dataset."""
        query = select(FeedbackRow).where(FeedbackRow.account == account)
        if owners is not None:
            query = query.where(FeedbackRow.owner.in_(list(owners)))
        if kpi_name is not None:
            query = query.where(FeedbackRow.kpi_name == kpi_name)
        if posted_since is not None:
            # Stored in UTC (naive means UTC, as in Context); SQLite compares the stored text,
            # so the bound must be in UTC too.
            since = aware(posted_since)
            assert since is not None
            query = query.where(FeedbackRow.posted_at >= since.astimezone(UTC))
        with self._db.session() as session:
            rows = session.scalars(query.order_by(FeedbackRow.posted_at, FeedbackRow.seq)).all()
            return [_feedback(row) for row in rows]


def _conflict_message(existing: FeedbackRow, new: NewFeedback) -> str:
    recorded = Context.model_validate_json(existing.context_json)
    differs = []
    if existing.kpi_value != new.kpi_value:
        differs.append(f"value {existing.kpi_value:g}, not {new.kpi_value:g}")
    if recorded != new.context:
        differs.append("another context")
    what = " and ".join(differs) or "another observation"
    return (
        f"feedback {existing.id} already records this creative's {new.kpi_name} on "
        f'{new.context.account} with {what}; send "correction": true to replace it'
    )
