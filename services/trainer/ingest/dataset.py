"""The BoigLLM instruction dataset for both directions, written as a versioned folder.

Content simulation: context + KPI level -> verbalization. Behaviour simulation: context +
verbalization -> KPI level. Examples hold structured fields only; the describer's versioned
prompt templates turn them into text at training time, so a prompt change needs no re-ingest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common.contracts import Context, KpiLevel, Verbalization
from services.common.hashing import file_sha256
from services.common.history import HistoryStore
from services.common.verbalization import parse, render
from services.trainer.ingest.kpi import KpiBuckets, KpiObservation, normalize_kpis
from services.trainer.ingest.rows import IngestSummary, PostRow
from services.trainer.ingest.split import Split

FORMAT_VERSION = 1
"""Bump when the example or manifest layout changes; readers refuse versions they don't know."""

MANIFEST = "manifest.json"
LATEST = "latest"
_VERSION_DIR = re.compile(r"^v(\d+)$")


class Direction(StrEnum):
    CONTENT = "content"
    """Input: context, kpi_name, level. Target: verbalization."""
    BEHAVIOUR = "behaviour"
    """Input: context, kpi_name, verbalization. Target: level."""


SPLITS = ("train", "test")


class InstructionExample(BaseModel):
    """One training example; which fields are input and which target depends on direction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    direction: Direction
    id: str
    context: Context
    kpi_name: str
    level: KpiLevel
    percentile: float = Field(ge=0.0, le=1.0, description="Mid-rank percentile in the account.")
    too_few_posts: bool = Field(description="The account had fewer posts than min_posts.")
    verbalization: str = Field(description="The image's verbalization in its text form (§4).")


@dataclass(frozen=True)
class InstructionDataset:
    examples: dict[tuple[Direction, str], list[InstructionExample]]
    """(direction, "train" | "test") -> examples."""
    flagged_accounts: dict[str, list[str]]
    """Split -> accounts whose KPI levels rest on fewer than min_posts posts."""


def build_dataset(
    rows: Sequence[PostRow],
    split: Split,
    verbalizations: Mapping[str, Verbalization],
    *,
    buckets: KpiBuckets | None = None,
) -> InstructionDataset:
    """Examples of both directions for each split, with KPI levels normalized per account.

    Levels are normalized within each split separately: a training label must not depend on
    future posts (ranking against them would leak the test period into training), and test
    labels rank within the test period, which absorbs platform drift the way by_year does.
    Different KPIs (likes vs shares) are never ranked against each other.
    """
    buckets = buckets or KpiBuckets()
    examples: dict[tuple[Direction, str], list[InstructionExample]] = {
        (direction, name): [] for direction in Direction for name in SPLITS
    }
    flagged: dict[str, list[str]] = {}
    for name, indices in (("train", split.train), ("test", split.test)):
        part = [rows[i] for i in indices]
        normalized = _normalize(part, buckets)
        flagged[name] = sorted(
            {row.account for row, kpi in zip(part, normalized, strict=True) if kpi[2]}
        )
        for row, (percentile, level, too_few) in zip(part, normalized, strict=True):
            text = render(verbalizations[row.image_sha256])
            for direction in Direction:
                examples[direction, name].append(
                    InstructionExample(
                        direction=direction,
                        id=row.id,
                        context=row.context,
                        kpi_name=row.kpi_name,
                        level=level,
                        percentile=percentile,
                        too_few_posts=too_few,
                        verbalization=text,
                    )
                )
    return InstructionDataset(examples=examples, flagged_accounts=flagged)


def _normalize(rows: Sequence[PostRow], buckets: KpiBuckets) -> list[tuple[float, KpiLevel, bool]]:
    by_kpi: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_kpi[row.kpi_name].append(index)
    result: list[tuple[float, KpiLevel, bool]] = [(0.0, KpiLevel.LOW, False)] * len(rows)
    for indices in by_kpi.values():
        observations = [
            KpiObservation(rows[i].account, rows[i].kpi_value, rows[i].posted_at) for i in indices
        ]
        for i, kpi in zip(indices, normalize_kpis(observations, buckets), strict=True):
            result[i] = (kpi.percentile, kpi.level, kpi.too_few_posts)
    return result


def write_dataset(
    dataset: InstructionDataset,
    out: Path,
    *,
    summary: IngestSummary,
    split: Split,
    test_fraction: float,
    seed: int,
    featurizer_version: str,
    buckets: KpiBuckets,
    images_sha256: Iterable[str],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out/v<N>`` (N one above the newest) atomically and point ``out/latest`` at it.

    Everything is written into a hidden temporary folder first and renamed into place, so a
    reader never sees a half-written version and a crash leaves only a ``.tmp-*`` folder.
    ``provenance``: more sections for the manifest (e.g. ``feedback``: what a retrain folded
    in), so that the data hash covers them too.
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        files: dict[str, str] = {}
        counts: dict[str, dict[str, int]] = {}
        for (direction, name), examples in dataset.examples.items():
            relative = f"{direction.value}/{name}.jsonl"
            files[relative] = _write_jsonl(
                staging / relative, (example.model_dump_json() for example in examples)
            )
            counts.setdefault(direction.value, {})[name] = len(examples)
        files["rejected.jsonl"] = _write_jsonl(
            staging / "rejected.jsonl",
            (
                json.dumps({"row": e.row, "id": e.id, "kind": e.kind.value, "reason": e.reason})
                for e in summary.errors
            ),
        )
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "source": {
                "path": str(summary.source),
                "sha256": file_sha256(summary.source),
                "variant": summary.variant.value,
            },
            # The data file names its images by path only; this hash changes if any kept
            # image's bytes change, so two datasets with equal hashes were built from equal data.
            "images_sha256": hashlib.sha256("\n".join(sorted(images_sha256)).encode()).hexdigest(),
            "featurizer_version": featurizer_version,
            "rows": {
                "read": summary.read,
                "kept": summary.kept,
                "skipped": {kind.value: count for kind, count in summary.skipped.items()},
            },
            "split": {
                "mode": split.mode.value,
                "test_fraction": test_fraction,
                "seed": seed,
                "scope": "per account",
                "cut_times": {a: t.isoformat() for a, t in sorted(split.cut_times.items())},
            },
            "kpi": {
                "buckets": buckets.model_dump(mode="json"),
                "normalized": "within account (and KPI name), each split separately",
                "flagged_accounts": dataset.flagged_accounts,
            },
            "directions": {
                Direction.CONTENT.value: {"input": ["context", "level"], "target": "verbalization"},
                Direction.BEHAVIOUR.value: {
                    "input": ["context", "verbalization"],
                    "target": "level",
                },
            },
            "counts": counts,
            "files": files,
            **(provenance or {}),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        final = _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point_latest(out, final.name)
    return final


def read_manifest(version_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{version_dir}: dataset format {manifest.get('format_version')} is not "
            f"{FORMAT_VERSION}; re-run ingestion"
        )
    return manifest


def _publish(staging: Path, out: Path) -> Path:
    # rename() of a directory onto an existing non-empty one fails, so two concurrent runs
    # can never overwrite each other: the loser takes the next number.
    for _ in range(100):
        existing = [int(m.group(1)) for p in out.iterdir() if (m := _VERSION_DIR.match(p.name))]
        final = out / f"v{max(existing, default=0) + 1}"
        try:
            staging.rename(final)
        except OSError:
            if final.exists():
                continue
            raise
        return final
    raise RuntimeError(f"could not find a free version folder in {out}")


def prune_dataset_versions(out: Path, *, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest ``v<N>`` folders of ``out``, never the one ``latest``
    names; returns the names deleted, oldest first. Checkpoints record a dataset's hash, not
    its folder, so nothing served needs an old version; do not prune while a training run
    reads one that is neither ``latest`` nor among the newest."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    pointer = out / LATEST
    latest = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    numbered = sorted(
        (int(m.group(1)), p) for p in out.iterdir() if (m := _VERSION_DIR.match(p.name))
    )
    doomed = [path for _, path in numbered[:-keep] if path.name != latest]
    for path in doomed:
        # Renamed first: a reader never lists a half-deleted version.
        trash = out / f".trash-{path.name}-{secrets.token_hex(4)}"
        path.rename(trash)
        shutil.rmtree(trash)
    return [path.name for path in doomed]


def _point_latest(out: Path, name: str) -> None:
    pointer = out / f".{LATEST}-{secrets.token_hex(4)}"
    pointer.write_text(name + "\n", encoding="utf-8")
    pointer.replace(out / LATEST)


def _write_jsonl(path: Path, lines: Iterable[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("w", encoding="utf-8") as handle:
        for line in lines:
            data = line + "\n"
            handle.write(data)
            digest.update(data.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


TRAIN_HISTORY_FILE = "history-train.json"
"""Per dataset version: the history store of its training split, which training prompts and
the evaluation's describer read (the test split's posts are never in it)."""


def history_of(examples: Sequence[InstructionExample]) -> HistoryStore:
    """The history store of content examples (one per post)."""
    return HistoryStore.from_looks(
        (e.context.account, e.kpi_name, e.level, parse(e.verbalization)) for e in examples
    )


def write_histories(
    dataset: InstructionDataset, version_dir: Path, serving_history: Path | None
) -> None:
    """The training split's store into the version folder; every post of the dataset merged
    into ``serving_history`` (the describer's store: an account's whole ingested past)."""
    train = dataset.examples.get((Direction.CONTENT, "train"), [])
    history_of(train).write(version_dir / TRAIN_HISTORY_FILE)
    if serving_history is not None:
        everything = [
            e for (d, _), items in dataset.examples.items() if d is Direction.CONTENT for e in items
        ]
        current = (
            HistoryStore.read(serving_history) if serving_history.is_file() else HistoryStore()
        )
        current.merge(history_of(everything)).write(serving_history)
