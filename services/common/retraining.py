"""Retraining records in the SQL store: every decision about a registry entry's pointer
(promote or reject a retrained candidate, an operator's promote or rollback) and the entry's
published versions as the trainer last saw them.

The trainer writes both (``services.trainer.retrain``); the gateway, which does not mount the
checkpoint registry, reads them to answer GET /v1/checkpoints and /v1/retrain/decisions.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    delete,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.common.contracts import (
    CheckpointEvaluation,
    CheckpointInfo,
    CheckpointList,
    FeedbackFold,
    RetrainAction,
    RetrainDecision,
)
from services.common.db import Base, Database, newest_first_page
from services.common.errors import NotFound
from services.common.leases import aware, utcnow


class RetrainDecisionRow(Base):
    __tablename__ = "retrain_decisions"
    __table_args__ = (Index("ix_retrain_decisions_checkpoint_seq", "checkpoint", "seq"),)

    seq: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=True, doc="Decision order: pages follow it."
    )
    id: Mapped[str] = mapped_column(String(32), unique=True, doc="Public id.")
    checkpoint: Mapped[str] = mapped_column(String(64), doc="Registry entry.")
    action: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    previous_version: Mapped[str | None] = mapped_column(String(64), default=None)
    current_version: Mapped[str | None] = mapped_column(String(64), default=None)
    candidate_version: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_version: Mapped[str | None] = mapped_column(String(128), default=None)
    dataset_sha256: Mapped[str | None] = mapped_column(
        String(64), default=None, index=True, doc="What a later retrain asks: decided already?"
    )
    evaluation_json: Mapped[str | None] = mapped_column(Text, default=None)
    feedback_json: Mapped[str | None] = mapped_column(Text, default=None)
    run_id: Mapped[str | None] = mapped_column(String(32), default=None)
    details_json: Mapped[str | None] = mapped_column(
        Text,
        default=None,
        doc="What only operators read (the CLI shows it; the API does not): trusted key "
        "prefixes, folders, the operator's name, timings.",
    )


class CheckpointVersionRow(Base):
    __tablename__ = "checkpoint_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    current: Mapped[bool] = mapped_column(Boolean, default=False)
    base_model: Mapped[str] = mapped_column(String(512))
    dataset_version: Mapped[str] = mapped_column(String(128))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    metrics_json: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), doc="When the trainer last recorded the registry's state."
    )


@dataclass(frozen=True)
class NewDecision:
    """A decision to record; ``details`` is for operators only (never sent by the API)."""

    checkpoint: str
    action: RetrainAction
    trigger: str
    reason: str
    previous_version: str | None
    current_version: str | None
    candidate_version: str | None
    dataset_version: str | None = None
    dataset_sha256: str | None = None
    evaluation: CheckpointEvaluation | None = None
    feedback: FeedbackFold | None = None
    run_id: str | None = None
    details: dict[str, object] | None = None


@dataclass(frozen=True)
class StoredDecision:
    decision: RetrainDecision
    seq: int
    details: dict[str, object]


def _decision(row: RetrainDecisionRow) -> StoredDecision:
    decided_at = aware(row.decided_at)
    assert decided_at is not None
    return StoredDecision(
        decision=RetrainDecision(
            id=row.id,
            checkpoint=row.checkpoint,
            action=row.action,  # type: ignore[arg-type]  # written from RetrainAction only
            trigger=row.trigger,  # type: ignore[arg-type]
            reason=row.reason,
            decided_at=decided_at,
            previous_version=row.previous_version,
            current_version=row.current_version,
            candidate_version=row.candidate_version,
            dataset_version=row.dataset_version,
            dataset_sha256=row.dataset_sha256,
            evaluation=(
                CheckpointEvaluation.model_validate_json(row.evaluation_json)
                if row.evaluation_json
                else None
            ),
            feedback=(
                FeedbackFold.model_validate_json(row.feedback_json) if row.feedback_json else None
            ),
            run_id=row.run_id,
        ),
        seq=row.seq,
        details=json.loads(row.details_json) if row.details_json else {},
    )


class RetrainLedger:
    """Every write and read of retraining decisions and of the recorded checkpoint lists."""

    def __init__(self, database: Database) -> None:
        self._db = database

    # --- decisions ----------------------------------------------------------------------

    def record(self, new: NewDecision) -> StoredDecision:
        row = RetrainDecisionRow(
            id=secrets.token_hex(16),
            checkpoint=new.checkpoint,
            action=new.action,
            trigger=new.trigger,
            reason=new.reason,
            decided_at=utcnow(),
            previous_version=new.previous_version,
            current_version=new.current_version,
            candidate_version=new.candidate_version,
            dataset_version=new.dataset_version,
            dataset_sha256=new.dataset_sha256,
            evaluation_json=new.evaluation.model_dump_json() if new.evaluation else None,
            feedback_json=new.feedback.model_dump_json() if new.feedback else None,
            run_id=new.run_id,
            details_json=json.dumps(new.details, sort_keys=True, default=str)
            if new.details
            else None,
        )
        with self._db.session() as session:
            session.add(row)
        return _decision(row)

    def get(self, decision_id: str) -> StoredDecision:
        with self._db.session() as session:
            row = session.scalars(
                select(RetrainDecisionRow).where(RetrainDecisionRow.id == decision_id)
            ).one_or_none()
            if row is None:
                raise NotFound(f"no retrain decision {decision_id!r}")
            return _decision(row)

    def page(
        self,
        *,
        limit: int,
        before: int | None = None,
        checkpoint: str | None = None,
        action: str | None = None,
    ) -> tuple[list[StoredDecision], int | None]:
        """Up to ``limit`` decisions, newest first, made before ``before`` (a ``seq``); and
        the ``before`` of the next page, None when there is none."""
        query = select(RetrainDecisionRow)
        if checkpoint is not None:
            query = query.where(RetrainDecisionRow.checkpoint == checkpoint)
        if action is not None:
            query = query.where(RetrainDecisionRow.action == action)
        with self._db.session() as session:
            rows, next_before = newest_first_page(
                session, query, RetrainDecisionRow.seq, limit=limit, before=before
            )
            return [_decision(row) for row in rows], next_before

    def evaluated(
        self, *, checkpoint: str, dataset_sha256: str, against: str
    ) -> StoredDecision | None:
        """The latest retrain decision about a candidate trained on ``dataset_sha256`` and
        measured against version ``against``: a later retrain of the same data against the
        same current checkpoint would only repeat it."""
        with self._db.session() as session:
            row = session.scalars(
                select(RetrainDecisionRow)
                .where(
                    RetrainDecisionRow.checkpoint == checkpoint,
                    RetrainDecisionRow.trigger == "retrain",
                    RetrainDecisionRow.dataset_sha256 == dataset_sha256,
                    RetrainDecisionRow.previous_version == against,
                )
                .order_by(RetrainDecisionRow.seq.desc())
                .limit(1)
            ).one_or_none()
            return _decision(row) if row is not None else None

    # --- checkpoint lists ---------------------------------------------------------------

    def record_versions(self, name: str, versions: Sequence[CheckpointInfo]) -> None:
        """Replace what is recorded of ``name`` with ``versions`` (the registry as it is
        now: pruned versions disappear), in one transaction."""
        now = utcnow()
        with self._db.session() as session:
            session.execute(delete(CheckpointVersionRow).where(CheckpointVersionRow.name == name))
            session.add_all(
                CheckpointVersionRow(
                    name=name,
                    version=info.version,
                    kind=info.kind,
                    created_at=info.created_at,
                    current=info.current,
                    base_model=info.base_model,
                    dataset_version=info.dataset_version,
                    dataset_sha256=info.dataset_sha256,
                    metrics_json=json.dumps(info.metrics, sort_keys=True),
                    recorded_at=now,
                )
                for info in versions
            )

    def versions(self, name: str) -> CheckpointList:
        with self._db.session() as session:
            rows = session.scalars(
                select(CheckpointVersionRow)
                .where(CheckpointVersionRow.name == name)
                .order_by(CheckpointVersionRow.created_at.desc(), CheckpointVersionRow.version)
            ).all()
            items = [
                CheckpointInfo(
                    name=row.name,
                    version=row.version,
                    kind=row.kind,
                    created_at=aware(row.created_at) or utcnow(),
                    current=row.current,
                    base_model=row.base_model,
                    dataset_version=row.dataset_version,
                    dataset_sha256=row.dataset_sha256,
                    metrics=json.loads(row.metrics_json),
                )
                for row in rows
            ]
            recorded = max((aware(row.recorded_at) for row in rows), default=None, key=_moment)
        current = next((item.version for item in items if item.current), None)
        return CheckpointList(name=name, current=current, items=items, recorded_at=recorded)


def _moment(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0
