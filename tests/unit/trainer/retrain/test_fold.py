"""Folding feedback into a dataset: a new version of the history plus the trusted feedback,
nothing twice, corrections and distrust applied, and no image read when nothing is new."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.history import HistoryStore
from services.trainer.finetune.data import load_examples, resolve_dataset_dir
from services.trainer.ingest.dataset import Direction, read_manifest
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.ingest.rows import read_rows
from services.trainer.retrain import fold as fold_module
from services.trainer.retrain.fold import FoldScope, fold_feedback, read_watermark
from tests.unit.trainer.retrain.conftest import ACCOUNTS, POSTS_PER_ACCOUNT, Feedback, png


def ids(version: Path) -> set[str]:
    return {
        e.id
        for split in ("train", "test")
        for e in load_examples(version, split)[Direction.CONTENT]
    }


async def test_a_fold_adds_trusted_feedback_and_skips_what_the_history_holds(
    dataset: Path, feedback: Feedback, featurizer: HttpFeaturizer, tmp_path: Path
) -> None:
    new = [feedback.record(account, 40 + day) for account in ACCOUNTS for day in range(3)]
    twin = feedback.record("acme", 41, image=png(ACCOUNTS["acme"], 5))  # history's acme-5
    stranger = feedback.record("zeta", 45, owner="someone")
    history = tmp_path / "history.json"
    outcome = await fold_feedback(
        store=feedback.store,
        artifacts=feedback.artifacts,
        dataset=dataset,
        featurizer=featurizer,
        scope=FoldScope(owners=("trusted",)),
        history_path=history,
    )
    assert outcome.created and outcome.version_dir.name == "v2"
    assert (outcome.rows, outcome.new, outcome.removed) == (6, 6, 0)
    assert [(s.feedback_id, s.reason) for s in outcome.skipped] == [
        (twin, "the dataset holds this creative already (row acme-5)")
    ]
    assert resolve_dataset_dir(dataset) == outcome.version_dir
    kept = ids(outcome.version_dir)
    assert {f"feedback-{record}" for record in new} <= kept
    assert f"feedback-{twin}" not in kept and f"feedback-{stranger}" not in kept
    assert len(kept) == 2 * POSTS_PER_ACCOUNT + 6
    manifest = read_manifest(outcome.version_dir)
    assert manifest["feedback"]["previous_version"] == "v1"
    assert manifest["feedback"]["scope"]["owners"] == ["trusted"]
    assert manifest["split"]["mode"] == "temporal"
    # The newest posts are the feedback: the test split holds them.
    test_ids = {e.id for e in load_examples(outcome.version_dir, "test")[Direction.CONTENT]}
    assert {f"feedback-{record}" for record in new} <= test_ids
    assert HistoryStore.read(history).accounts() == set(ACCOUNTS)
    assert read_watermark(dataset)["version"] == "v2"  # type: ignore[index]


async def test_nothing_new_reads_no_image_and_writes_no_version(
    dataset: Path, feedback: Feedback, featurizer: HttpFeaturizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    feedback.record("acme", 40)
    connections = []

    async def connect() -> HttpFeaturizer:
        connections.append(1)
        return featurizer

    async def fold() -> fold_module.FoldOutcome:
        return await fold_feedback(
            store=feedback.store,
            artifacts=feedback.artifacts,
            dataset=dataset,
            featurizer=connect,
        )

    first = await fold()
    assert first.created and connections == [1]

    def no_reading(*_: object, **__: object) -> None:
        raise AssertionError("a fold with nothing new read the dataset's images")

    monkeypatch.setattr(fold_module, "read_rows", no_reading)
    again = await fold()
    assert not again.created and again.version_dir == first.version_dir
    assert (again.rows, again.new) == (1, 0)
    assert connections == [1]  # nothing to describe: the featurizer was never reached


async def test_a_correction_replaces_the_value_and_distrust_removes_the_rows(
    dataset: Path, feedback: Feedback, featurizer: HttpFeaturizer
) -> None:
    corrected = feedback.record("acme", 40, kpi_value=100.0)
    feedback.record("zeta", 41, owner="other")

    async def fold(scope: FoldScope) -> fold_module.FoldOutcome:
        return await fold_feedback(
            store=feedback.store,
            artifacts=feedback.artifacts,
            dataset=dataset,
            featurizer=featurizer,
            scope=scope,
        )

    both = await fold(FoldScope())
    assert (both.rows, both.new) == (2, 2)
    feedback.record("acme", 40, kpi_value=250.0, correction=True)
    fixed = await fold(FoldScope())
    assert fixed.created and (fixed.rows, fixed.new, fixed.removed) == (2, 1, 0)
    source = Path(read_manifest(fixed.version_dir)["source"]["path"])
    values = {row.id: row.kpi_value for row in read_rows(source).rows}
    assert values[f"feedback-{corrected}"] == 250.0
    # Trust narrowed to one key: the other key's row leaves the dataset.
    narrowed = await fold(FoldScope(owners=("trusted",)))
    assert narrowed.created and (narrowed.rows, narrowed.new, narrowed.removed) == (1, 0, 1)
    # An account outside the scope keeps what was folded for it.
    only_zeta = await fold(FoldScope(accounts=("zeta",), owners=("trusted",)))
    assert not only_zeta.created and only_zeta.rows == 1


async def test_a_dataset_whose_source_changed_is_not_folded_into(
    dataset: Path, feedback: Feedback, featurizer: HttpFeaturizer
) -> None:
    feedback.record("acme", 40)
    source = Path(read_manifest(resolve_dataset_dir(dataset))["source"]["path"])
    with source.open("a", encoding="utf-8") as handle:  # noqa: ASYNC230  (a test's setup)
        handle.write(json.dumps({"id": "extra"}) + "\n")
    with pytest.raises(ValueError, match="changed since"):
        await fold_feedback(
            store=feedback.store,
            artifacts=feedback.artifacts,
            dataset=dataset,
            featurizer=featurizer,
        )
