"""Fixtures of the retrain tests: a small creative history (flat-colour images whose colour
follows the account), ingested through the real featurizer in process (palettes and tones, no
detector), and KPI feedback recorded in a SQLite store with its images in a local artifact
store."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from services.common.contracts import Context
from services.common.db import Database
from services.common.feedback import FEEDBACK_NAMESPACE, FeedbackStore, NewFeedback
from services.common.storage import LocalArtifactStore
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.ingest.pipeline import ingest
from tests.featurizer_in_process import featurizer_without_detector

START = datetime(2024, 1, 1, 12, tzinfo=UTC)
ACCOUNTS = {"acme": (200, 30, 30), "zeta": (30, 30, 200)}
POSTS_PER_ACCOUNT = 30


def png(rgb: tuple[int, int, int], shade: int) -> bytes:
    """A 24 px creative: the account's colour, a shade per post, a white square on half."""
    buffer = io.BytesIO()
    image = Image.new("RGB", (24, 24), tuple(max(0, c - shade) for c in rgb))
    if shade % 2:
        image.paste((255, 255, 255), (6, 6, 18, 18))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_history(folder: Path) -> Path:
    """``posts.jsonl`` of both accounts, a post a day each, likes rising with the square."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "media").mkdir(exist_ok=True)
    rows = []
    for account, rgb in ACCOUNTS.items():
        for day in range(POSTS_PER_ACCOUNT):
            name = f"media/{account}-{day}.png"
            (folder / name).write_bytes(png(rgb, day))
            rows.append(
                {
                    "id": f"{account}-{day}",
                    "account": account,
                    "posted_at": (START + timedelta(days=day)).isoformat(),
                    "text": f"{account} post {day}",
                    "keywords": ["sale"],
                    "media": name,
                    "kpi_name": "likes",
                    "kpi_value": float(10 + day + (50 if day % 2 else 0)),
                }
            )
    path = folder / "posts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
async def featurizer() -> AsyncIterator[HttpFeaturizer]:
    async with featurizer_without_detector() as featurizer:
        yield featurizer


@dataclass
class Feedback:
    """Feedback as the gateway records it, without the gateway."""

    database: Database
    store: FeedbackStore
    artifacts: LocalArtifactStore

    def record(
        self,
        account: str,
        day: int,
        *,
        owner: str = "trusted",
        kpi_value: float = 100.0,
        image: bytes | None = None,
        correction: bool = False,
    ) -> str:
        data = image if image is not None else png(ACCOUNTS[account], 100 + day)
        ref = self.artifacts.put(data, namespace=FEEDBACK_NAMESPACE, suffix=".png")
        context = Context(
            account=account,
            text=f"{account} new post {day}",
            keywords=["sale"],
            posted_at=START + timedelta(days=day),
        )
        record, _ = self.store.record(
            NewFeedback(
                owner=owner,
                context=context,
                kpi_name="likes",
                kpi_value=kpi_value,
                creative_sha256=ref.sha256,
                artifact_key=ref.key,
                width=24,
                height=24,
                image_id=None,
            ),
            correction=correction,
        )
        return record.id


@pytest.fixture
def feedback(tmp_path: Path) -> Feedback:
    database = Database(f"sqlite:///{tmp_path / 'boig.db'}")
    database.create_schema()
    return Feedback(database, FeedbackStore(database), LocalArtifactStore(tmp_path / "artifacts"))


@pytest.fixture
async def dataset(tmp_path: Path, featurizer: HttpFeaturizer) -> Path:
    """The dataset root, its v1 ingested from the history."""
    posts = write_history(tmp_path / "history")
    root = tmp_path / "datasets" / "brands"
    await ingest(posts, out=root, featurizer=featurizer, progress=False)
    return root
