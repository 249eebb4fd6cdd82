"""KPI feedback as ingest rows: what the gateway recorded for an account, in the shape of a
creative history, so the next training round can fold it into the account's dataset.

``feedback_rows`` copies each record's image out of the artifact store into a folder and
returns ``PostRow``s; ``write_rows_jsonl`` writes rows as a posts-variant JSONL that
``read_rows`` (and so ``ingest``) reads back, full image decode included.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from services.common.errors import NotFound
from services.common.feedback import Feedback, FeedbackStore
from services.common.storage import ArtifactStore
from services.trainer.ingest.rows import PostRow

ROW_ID_PREFIX = "feedback-"
"""Ingest row ids of feedback: ``feedback-<record id>``, apart from any history's own ids."""


@dataclass(frozen=True)
class SkippedFeedback:
    feedback_id: str
    reason: str


@dataclass(frozen=True)
class FeedbackRows:
    rows: list[PostRow]
    """Oldest post first; one per creative and KPI name."""
    skipped: list[SkippedFeedback] = field(default_factory=list)
    """Records left out, each with why: superseded by another key's newer record of the same
    creative and KPI, or an image no longer in the artifact store."""


def feedback_rows(
    store: FeedbackStore,
    artifacts: ArtifactStore,
    *,
    account: str,
    media_dir: Path,
    owners: Collection[str] | None = None,
    kpi_name: str | None = None,
    posted_since: datetime | None = None,
) -> FeedbackRows:
    """The feedback recorded for ``account`` (by ``owners`` only, when given) as ingest rows,
    each image written to ``media_dir/<sha256><suffix>`` (kept when already there).

    Several keys may report the same creative and KPI; one post has one true value, so the
    most recently updated record stands and the others are reported as skipped.
    """
    records = store.for_account(
        account, owners=owners, kpi_name=kpi_name, posted_since=posted_since
    )
    kept, skipped = _newest_per_creative(records)
    media_dir = media_dir.resolve()
    rows: list[PostRow] = []
    for record in kept:
        try:
            media = _write_media(artifacts, record, media_dir)
        except NotFound:
            reason = f"its image {record.artifact_key} is no longer in the artifact store"
            skipped.append(SkippedFeedback(record.id, reason))
            continue
        rows.append(
            PostRow(
                id=f"{ROW_ID_PREFIX}{record.id}",
                context=record.context,
                media=media,
                kpi_name=record.kpi_name,
                kpi_value=record.kpi_value,
                image_sha256=record.creative_sha256,
                width=record.width,
                height=record.height,
            )
        )
    return FeedbackRows(rows=rows, skipped=skipped)


def write_rows_jsonl(rows: Iterable[PostRow], path: Path) -> Path:
    """``rows`` as a posts-variant JSONL at ``path``, media relative to its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    lines = []
    for row in rows:
        lines.append(
            json.dumps(
                {
                    "id": row.id,
                    "account": row.account,
                    "posted_at": row.posted_at.isoformat(),
                    "text": row.context.text,
                    "keywords": row.context.keywords,
                    "media": os.path.relpath(row.media, base),
                    "kpi_name": row.kpi_name,
                    "kpi_value": row.kpi_value,
                }
            )
            + "\n"
        )
    path.write_text("".join(lines))
    return path


def _newest_per_creative(
    records: list[Feedback],
) -> tuple[list[Feedback], list[SkippedFeedback]]:
    newest: dict[tuple[str, str], Feedback] = {}
    for record in records:
        key = (record.creative_sha256, record.kpi_name)
        current = newest.get(key)
        if current is None or (record.updated_at, record.seq) > (current.updated_at, current.seq):
            newest[key] = record
    kept_ids = {record.id for record in newest.values()}
    kept = [record for record in records if record.id in kept_ids]
    skipped = [
        SkippedFeedback(
            record.id,
            f"feedback {newest[(record.creative_sha256, record.kpi_name)].id} of another key "
            "reports this creative's KPI more recently",
        )
        for record in records
        if record.id not in kept_ids
    ]
    return kept, skipped


def _write_media(artifacts: ArtifactStore, record: Feedback, media_dir: Path) -> Path:
    suffix = PurePosixPath(record.artifact_key).suffix
    path = media_dir / f"{record.creative_sha256}{suffix}"
    if path.is_file():  # content-named: the file there is this image
        return path
    data = artifacts.get(record.artifact_key)
    if hashlib.sha256(data).hexdigest() != record.creative_sha256:
        raise ValueError(f"artifact {record.artifact_key} does not hold the recorded image")
    media_dir.mkdir(parents=True, exist_ok=True)
    # Beside the target, then renamed: a crash never leaves half an image under its name.
    fd, tmp = tempfile.mkstemp(dir=media_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
