"""Fold KPI feedback into a dataset: a new version holding the previous version's posts plus
the feedback recorded since, deduplicated, with what was folded in its manifest.

The previous version's source rows are the history; feedback rows (ids ``feedback-<record>``)
are re-read from the store on every fold, so a correction replaces its value and a record of
a key no longer trusted drops out. A record whose creative (image SHA-256, account and KPI) is
in the history already is skipped: the history's row is the post. Beside the dataset, a
watermark file names the records the latest version reflects, so that a fold with nothing new
answers without reading a single image.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.feedback import FeedbackStore
from services.common.hashing import file_sha256
from services.common.storage import ArtifactStore
from services.trainer.finetune.data import resolve_dataset_dir
from services.trainer.ingest.dataset import LATEST, SPLITS, Direction, read_manifest
from services.trainer.ingest.featurize import Featurize
from services.trainer.ingest.feedback import (
    ROW_ID_PREFIX,
    SkippedFeedback,
    feedback_rows,
    write_rows_jsonl,
)
from services.trainer.ingest.kpi import KpiBuckets
from services.trainer.ingest.pipeline import ingest
from services.trainer.ingest.rows import PostRow, read_rows
from services.trainer.ingest.split import SplitMode

logger = logging.getLogger(__name__)

WATERMARK_FILE = "feedback-watermark.json"
"""Beside the versions: the fold's scope, the digest of the feedback records it read and the
version they are in (never inside a version: it would change the data hash)."""
SOURCES_DIR = "sources"
"""The combined posts files folds write (history + feedback), one per version they make."""
FEEDBACK_MEDIA_DIR = "feedback-media"
"""Feedback images copied out of the artifact store, named by their SHA-256."""
MAX_SKIPPED_IN_MANIFEST = 100

FeaturizerSource = Featurize | Callable[[], Awaitable[Featurize]]
"""A featurizer, or how to reach one: reached only when a fold has images to describe, so a
check with nothing new needs no featurizer up."""


@dataclass(frozen=True)
class FoldScope:
    """Whose feedback a fold reads."""

    accounts: tuple[str, ...] | None = None
    """None: every account the dataset holds. An account not in the dataset is folded in
    only when named here (a new brand's first posts)."""
    owners: tuple[str, ...] | None = None
    """API key prefixes whose feedback is trusted; None: every key's."""
    kpi_name: str | None = None
    """Only feedback of this KPI; None: every KPI's."""

    def record(self) -> dict[str, Any]:
        return {
            "accounts": sorted(self.accounts) if self.accounts is not None else None,
            "owners": sorted(self.owners) if self.owners is not None else None,
            "kpi_name": self.kpi_name,
        }


@dataclass(frozen=True)
class FoldOutcome:
    version_dir: Path
    """The dataset version that holds the feedback: a new one, or the latest as it was."""
    created: bool
    """A new version was written (else nothing had changed)."""
    rows: int
    """Feedback rows in ``version_dir``."""
    new: int
    """Feedback rows new or changed since the previous version (0 when none was written)."""
    removed: int
    """Feedback rows of the previous version left out now."""
    skipped: list[SkippedFeedback] = field(default_factory=list)
    records_digest: str = ""


def dataset_root(path: Path) -> Path:
    """The folder with ``latest`` and the ``v<N>`` versions, given it or one of its versions."""
    if (path / LATEST).is_file():
        return path
    if (path.parent / LATEST).is_file():
        return path.parent
    raise FileNotFoundError(f"{path} is no dataset folder (no {LATEST} in it or above it)")


def records_digest(
    store: FeedbackStore, *, accounts: Collection[str], scope: FoldScope
) -> tuple[str, int]:
    """SHA-256 of every (record id, revision) the fold would read, and the scope; and how
    many records that is. Reads no image: what decides that nothing is new."""
    items = []
    for account in sorted(accounts):
        for record in store.for_account(account, owners=scope.owners, kpi_name=scope.kpi_name):
            items.append(f"{record.id}:{record.revision}")
    canonical = json.dumps({"scope": scope.record(), "records": sorted(items)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest(), len(items)


def read_watermark(root: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads((root / WATERMARK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded


def _write_watermark(root: Path, *, digest: str, version: str, scope: FoldScope) -> None:
    body = {
        "records_digest": digest,
        "version": version,
        "scope": scope.record(),
        "folded_at": datetime.now(UTC).isoformat(),
    }
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".watermark-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, root / WATERMARK_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dataset_accounts(version_dir: Path) -> tuple[str, ...]:
    """The accounts a dataset version holds, from its examples (no image is read)."""
    accounts: set[str] = set()
    for split in SPLITS:
        path = version_dir / Direction.CONTENT.value / f"{split}.jsonl"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as handle:
            accounts.update(
                json.loads(line)["context"]["account"] for line in handle if line.strip()
            )
    return tuple(sorted(accounts))


async def fold_feedback(
    *,
    store: FeedbackStore,
    artifacts: ArtifactStore,
    dataset: Path,
    featurizer: FeaturizerSource,
    scope: FoldScope | None = None,
    history_path: Path | None = None,
    progress: bool = False,
) -> FoldOutcome:
    """Fold the feedback of ``scope`` into the dataset at ``dataset`` (its root or a version).

    The new version is ingested like the first (same split mode, test fraction, seed and KPI
    buckets as the previous version), through ``featurizer`` (its cache beside the versions
    spares every image it has seen), and ``history_path`` (the describer's history store)
    gets the new posts. Nothing new: no version is written and the latest is returned.
    """
    scope = scope or FoldScope()
    root = dataset_root(dataset)
    # The store, the images and the files are blocking work: off the event loop.
    prepared = await asyncio.to_thread(_prepare, store, artifacts, root, scope)
    if isinstance(prepared, FoldOutcome):
        return prepared
    split = prepared.manifest["split"]
    outcome = await ingest(
        prepared.source_file,
        out=root,
        featurizer=await featurizer() if callable(featurizer) else featurizer,
        split_mode=SplitMode(split["mode"]),
        test_fraction=float(split["test_fraction"]),
        seed=int(split["seed"]),
        buckets=KpiBuckets.model_validate(prepared.manifest["kpi"]["buckets"]),
        history_path=history_path,
        provenance={"feedback": prepared.provenance},
        progress=progress,
    )
    await asyncio.to_thread(
        _write_watermark,
        root,
        digest=prepared.digest,
        version=outcome.version_dir.name,
        scope=scope,
    )
    logger.info(
        "fold: %s -> %s: %d feedback rows (%d new, %d removed, %d skipped)",
        prepared.provenance["previous_version"],
        outcome.version_dir.name,
        prepared.rows,
        prepared.new,
        prepared.removed,
        len(prepared.skipped),
    )
    return FoldOutcome(
        version_dir=outcome.version_dir,
        created=True,
        rows=prepared.rows,
        new=prepared.new,
        removed=prepared.removed,
        skipped=prepared.skipped,
        records_digest=prepared.digest,
    )


@dataclass(frozen=True)
class _Pending:
    """A fold with something new: the combined posts file to ingest and what it holds."""

    source_file: Path
    manifest: dict[str, Any]
    provenance: dict[str, Any]
    digest: str
    rows: int
    new: int
    removed: int
    skipped: list[SkippedFeedback]


def _prepare(
    store: FeedbackStore, artifacts: ArtifactStore, root: Path, scope: FoldScope
) -> FoldOutcome | _Pending:
    """The latest version as it is (nothing new), or the combined posts file of a new one."""
    latest = resolve_dataset_dir(root)
    manifest = read_manifest(latest)
    accounts = (
        tuple(sorted(set(scope.accounts)))
        if scope.accounts is not None
        else dataset_accounts(latest)
    )
    digest, _ = records_digest(store, accounts=accounts, scope=scope)
    watermark = read_watermark(root)
    if (
        watermark is not None
        and watermark.get("records_digest") == digest
        and watermark.get("version") == latest.name
    ):
        logger.info("fold: no feedback new since %s", latest.name)
        return FoldOutcome(
            version_dir=latest,
            created=False,
            rows=int(manifest.get("feedback", {}).get("rows", 0)),
            new=0,
            removed=0,
            records_digest=digest,
        )

    previous = _read_source(Path(manifest["source"]["path"]), manifest)
    history = [row for row in previous if not row.id.startswith(ROW_ID_PREFIX)]
    folded_before = {row.id: row for row in previous if row.id.startswith(ROW_ID_PREFIX)}
    in_history = {(row.account, row.image_sha256, row.kpi_name): row.id for row in history}
    kept: list[PostRow] = []
    skipped: list[SkippedFeedback] = []
    for account in accounts:
        found = feedback_rows(
            store,
            artifacts,
            account=account,
            media_dir=root / FEEDBACK_MEDIA_DIR,
            owners=scope.owners,
            kpi_name=scope.kpi_name,
        )
        skipped.extend(found.skipped)
        for row in found.rows:
            twin = in_history.get((row.account, row.image_sha256, row.kpi_name))
            if twin is not None:
                reason = f"the dataset holds this creative already (row {twin})"
                skipped.append(SkippedFeedback(row.id.removeprefix(ROW_ID_PREFIX), reason))
                continue
            kept.append(row)

    def in_scope(row: PostRow) -> bool:
        return row.account in accounts and scope.kpi_name in (None, row.kpi_name)

    # Folded rows outside this fold's scope were not read again: they stay as they were.
    kept_elsewhere = [row for row in folded_before.values() if not in_scope(row)]
    new = sum(
        1
        for row in kept
        if row.id not in folded_before or _observation(folded_before[row.id]) != _observation(row)
    )
    kept_ids = {row.id for row in kept}
    removed = sum(1 for row in folded_before.values() if in_scope(row) and row.id not in kept_ids)
    if new == 0 and removed == 0:
        _write_watermark(root, digest=digest, version=latest.name, scope=scope)
        logger.info("fold: %d feedback rows, none new since %s", len(kept), latest.name)
        return FoldOutcome(
            version_dir=latest,
            created=False,
            rows=len(folded_before),
            new=0,
            removed=0,
            skipped=skipped,
            records_digest=digest,
        )
    rows = len(kept_elsewhere) + len(kept)
    return _Pending(
        source_file=_write_source(root, _ordered([*history, *kept_elsewhere, *kept])),
        manifest=manifest,
        provenance={
            "rows": rows,
            "new": new,
            "removed": removed,
            "previous_version": latest.name,
            "records_digest": digest,
            "scope": scope.record(),
            "skipped": [
                {"feedback_id": item.feedback_id, "reason": item.reason}
                for item in skipped[:MAX_SKIPPED_IN_MANIFEST]
            ],
            "skipped_total": len(skipped),
        },
        digest=digest,
        rows=rows,
        new=new,
        removed=removed,
        skipped=skipped,
    )


def _read_source(source: Path, manifest: dict[str, Any]) -> list[PostRow]:
    """The previous version's rows, from the file it was built from, as long as that file
    is the one it was built from."""
    if not source.is_file():
        raise FileNotFoundError(
            f"the dataset's source {source} is gone: feedback is folded into the posts the "
            "latest version was built from"
        )
    if file_sha256(source) != manifest["source"]["sha256"]:
        raise ValueError(f"{source} changed since the latest dataset version was built from it")
    return read_rows(source).rows


def _observation(row: PostRow) -> tuple[object, ...]:
    return (row.kpi_value, row.context, row.image_sha256, row.kpi_name)


def _ordered(rows: Iterable[PostRow]) -> list[PostRow]:
    return sorted(rows, key=lambda row: (row.posted_at, row.id))


def _write_source(root: Path, rows: list[PostRow]) -> Path:
    """The combined posts file, named by its content (a rerun writes the same file)."""
    folder = root / SOURCES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".posts-", suffix=".jsonl")
    os.close(fd)
    try:
        write_rows_jsonl(rows, Path(tmp))
        digest = file_sha256(Path(tmp))
        final = folder / f"posts-{digest[:16]}.jsonl"
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final
