"""Feedback as ingest rows: an account's records with their images on disk, written as a JSONL
that read_rows takes back unchanged; one row per creative and KPI, every left-out record
reported with its reason."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from services.common.contracts import Context
from services.common.db import Database
from services.common.feedback import FEEDBACK_NAMESPACE, FeedbackStore, NewFeedback
from services.common.storage import LocalArtifactStore
from services.trainer.ingest.feedback import feedback_rows, write_rows_jsonl
from services.trainer.ingest.rows import Variant, read_rows

POSTED = datetime(2024, 5, 1, 12, tzinfo=UTC)


def image(rgb: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), rgb).save(buffer, format=fmt)
    return buffer.getvalue()


class Reports:
    def __init__(self, database: Database, root: Path) -> None:
        self.store = FeedbackStore(database)
        self.artifacts = LocalArtifactStore(root)

    def record(
        self,
        data: bytes,
        *,
        owner: str = "k1",
        account: str = "acme",
        kpi_value: float = 10.0,
        days: int = 0,
        suffix: str = ".png",
        correction: bool = False,
    ) -> str:
        ref = self.artifacts.put(data, namespace=FEEDBACK_NAMESPACE, suffix=suffix)
        context = Context(
            account=account,
            text=f"post of day {days}",
            keywords=["sale"],
            posted_at=POSTED + timedelta(days=days),
        )
        new = NewFeedback(
            owner=owner,
            context=context,
            kpi_name="likes",
            kpi_value=kpi_value,
            creative_sha256=ref.sha256,
            artifact_key=ref.key,
            width=12,
            height=10,
            image_id=None,
        )
        return self.store.record(new, correction=correction)[0].id


@pytest.fixture
def reports(database: Database, tmp_path: Path) -> Reports:
    return Reports(database, tmp_path / "artifacts")


def test_an_accounts_feedback_reads_back_through_read_rows(
    reports: Reports, tmp_path: Path
) -> None:
    later = reports.record(image((200, 0, 0)), kpi_value=30, days=2)
    earlier = reports.record(image((0, 0, 200), "JPEG"), kpi_value=0.5, days=1, suffix=".jpg")
    reports.record(image((0, 200, 0)), account="globex")

    exported = feedback_rows(
        reports.store, reports.artifacts, account="acme", media_dir=tmp_path / "data" / "media"
    )
    assert exported.skipped == []
    assert [row.id for row in exported.rows] == [f"feedback-{earlier}", f"feedback-{later}"]
    first = exported.rows[0]
    assert first.media.suffix == ".jpg" and first.media.is_absolute()
    assert (first.kpi_value, first.account, first.posted_at) == (
        0.5,
        "acme",
        POSTED + timedelta(days=1),
    )

    path = write_rows_jsonl(exported.rows, tmp_path / "data" / "feedback.jsonl")
    read = read_rows(path)
    assert read.summary.variant is Variant.POSTS and read.summary.errors == []
    assert read.rows == exported.rows  # image checks, hashes and sizes agree with the record
    assert '"media": "media/' in path.read_text()  # relative: the folder moves as a whole


def test_the_newest_report_of_a_creative_stands(reports: Reports, tmp_path: Path) -> None:
    data = image((10, 20, 30))
    old = reports.record(data, owner="k1", kpi_value=5)
    new = reports.record(data, owner="k2", kpi_value=7)
    # A correction makes k1's the most recent word on it.
    assert reports.record(data, owner="k1", kpi_value=8, correction=True) == old

    exported = feedback_rows(
        reports.store, reports.artifacts, account="acme", media_dir=tmp_path / "m"
    )
    assert [(row.id, row.kpi_value) for row in exported.rows] == [(f"feedback-{old}", 8.0)]
    (skipped,) = exported.skipped
    assert skipped.feedback_id == new and old in skipped.reason

    only_k2 = feedback_rows(
        reports.store, reports.artifacts, account="acme", media_dir=tmp_path / "m", owners=["k2"]
    )
    assert [row.kpi_value for row in only_k2.rows] == [7.0] and only_k2.skipped == []


def test_a_record_whose_image_is_gone_is_skipped_with_its_reason(
    reports: Reports, tmp_path: Path
) -> None:
    gone = reports.record(image((1, 1, 1)))
    kept = reports.record(image((2, 2, 2)), days=1)
    (record,) = [f for f in reports.store.for_account("acme") if f.id == gone]
    assert reports.artifacts.delete(record.artifact_key)

    exported = feedback_rows(
        reports.store, reports.artifacts, account="acme", media_dir=tmp_path / "m"
    )
    assert [row.id for row in exported.rows] == [f"feedback-{kept}"]
    (skipped,) = exported.skipped
    assert skipped.feedback_id == gone and "no longer in the artifact store" in skipped.reason


def test_only_posts_since_a_time_when_asked(reports: Reports, tmp_path: Path) -> None:
    reports.record(image((1, 1, 1)), days=0)
    recent = reports.record(image((2, 2, 2)), days=5)
    exported = feedback_rows(
        reports.store,
        reports.artifacts,
        account="acme",
        media_dir=tmp_path / "m",
        posted_since=POSTED + timedelta(days=3),
    )
    assert [row.id for row in exported.rows] == [f"feedback-{recent}"]
