"""The retraining ledger: decisions recorded with both metric sets and read back in pages,
the lookup a retrain asks before training again, and the recorded checkpoint lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.contracts import (
    CheckpointEvaluation,
    CheckpointInfo,
    FeedbackFold,
    MetricDifference,
)
from services.common.db import Database
from services.common.errors import NotFound
from services.common.retraining import NewDecision, RetrainLedger

EVALUATION = CheckpointEvaluation(
    metric="heldout_loss",
    better="lower",
    confidence=0.95,
    resamples=2000,
    posts=40,
    window_start=datetime(2024, 5, 1, tzinfo=UTC),
    window_end=datetime(2024, 6, 1, tzinfo=UTC),
    candidate={"heldout_loss": 1.2},
    current={"heldout_loss": 1.4},
    improvement={"heldout_loss": MetricDifference(value=0.2, low=0.05, high=0.35)},
)


def decision(action: str = "promote", **changes: object) -> NewDecision:
    values: dict[str, object] = {
        "checkpoint": "boigllm",
        "action": action,
        "trigger": "retrain",
        "reason": f"{action} because",
        "previous_version": "v-old",
        "current_version": "v-new" if action == "promote" else "v-old",
        "candidate_version": "v-new",
        "dataset_version": "v2",
        "dataset_sha256": "a" * 64,
        "evaluation": EVALUATION,
        "feedback": FeedbackFold(rows=10, new=4, removed=0, skipped=1, trusted_keys=None),
        "run_id": "run-1",
        "details": {"owners": ["k1"]},
    }
    values.update(changes)
    return NewDecision(**values)  # type: ignore[arg-type]


def test_a_decision_is_read_back_as_recorded_and_paged_newest_first(database: Database) -> None:
    ledger = RetrainLedger(database)
    first = ledger.record(decision("promote"))
    second = ledger.record(decision("reject", dataset_sha256="b" * 64))
    third = ledger.record(
        decision(
            "rollback", trigger="operator", evaluation=None, feedback=None, checkpoint="boigsd"
        )
    )
    got = ledger.get(first.decision.id)
    assert got.decision == first.decision
    assert got.decision.evaluation == EVALUATION
    assert got.details == {"owners": ["k1"]}
    assert got.decision.decided_at.tzinfo is not None

    page, before = ledger.page(limit=2)
    assert [item.decision.id for item in page] == [third.decision.id, second.decision.id]
    assert before is not None
    rest, end = ledger.page(limit=2, before=before)
    assert [item.decision.id for item in rest] == [first.decision.id] and end is None
    assert [i.decision.id for i in ledger.page(limit=5, checkpoint="boigllm")[0]] == [
        second.decision.id,
        first.decision.id,
    ]
    assert [i.decision.id for i in ledger.page(limit=5, action="reject")[0]] == [second.decision.id]
    with pytest.raises(NotFound):
        ledger.get("nope")


def test_evaluated_names_the_decision_on_the_same_data_against_the_same_checkpoint(
    database: Database,
) -> None:
    ledger = RetrainLedger(database)
    assert ledger.evaluated(checkpoint="boigllm", dataset_sha256="a" * 64, against="v-old") is None
    recorded = ledger.record(decision("reject", current_version="v-old"))
    found = ledger.evaluated(checkpoint="boigllm", dataset_sha256="a" * 64, against="v-old")
    assert found is not None and found.decision.id == recorded.decision.id
    # Another served checkpoint, other data or an operator's move: not the same question.
    assert ledger.evaluated(checkpoint="boigllm", dataset_sha256="a" * 64, against="v-x") is None
    assert ledger.evaluated(checkpoint="boigllm", dataset_sha256="c" * 64, against="v-old") is None
    ledger.record(decision("rollback", trigger="operator", dataset_sha256="d" * 64))
    assert ledger.evaluated(checkpoint="boigllm", dataset_sha256="d" * 64, against="v-old") is None


def info(version: str, *, current: bool, days: int) -> CheckpointInfo:
    return CheckpointInfo(
        name="boigllm",
        version=version,
        kind="boigllm-lora",
        created_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=days),
        current=current,
        base_model="smollm2@sha256:x",
        dataset_version="v1",
        dataset_sha256="a" * 64,
        metrics={"train_loss": 0.5},
    )


def test_recorded_versions_replace_the_previous_record(database: Database) -> None:
    ledger = RetrainLedger(database)
    empty = ledger.versions("boigllm")
    assert (empty.items, empty.current, empty.recorded_at) == ([], None, None)
    ledger.record_versions("boigllm", [info("a", current=True, days=0)])
    ledger.record_versions(
        "boigllm", [info("b", current=False, days=2), info("c", current=True, days=1)]
    )
    listed = ledger.versions("boigllm")
    assert [item.version for item in listed.items] == ["b", "c"]  # newest first; "a" pruned
    assert listed.current == "c"
    assert listed.recorded_at is not None
    assert listed.items[0].metrics == {"train_loss": 0.5}
    assert ledger.versions("boigsd").items == []
