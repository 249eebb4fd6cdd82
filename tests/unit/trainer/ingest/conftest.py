"""Small creative histories on disk (images drawn with PIL) and a counting fake featurizer."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from PIL import Image

from services.common.contracts import ColorSwatch, ImageInput, Verbalization

Records = list[dict[str, Any]]


def _draw_image(path: Path, rgb: tuple[int, int, int], size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path, format="PNG")
    return path


def _write_rows(records: Records, path: Path) -> Path:
    """Write records as JSONL, CSV (keywords comma-joined) or Parquet, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    elif path.suffix == ".csv":
        flat = [
            {k: ",".join(v) if isinstance(v, list) else v for k, v in r.items()} for r in records
        ]
        pl.DataFrame(flat).write_csv(path)
    else:
        pl.DataFrame(records).write_parquet(path)
    return path


@pytest.fixture
def history(tmp_path: Path) -> Callable[..., Records]:
    """``history(accounts={"acme": 6})``: posts one day apart, distinct images, rising KPIs."""

    def make(accounts: dict[str, int] | None = None, *, kpi_name: str = "likes") -> Records:
        records: Records = []
        start = datetime(2024, 1, 1, tzinfo=UTC)
        for a, (account, count) in enumerate((accounts or {"acme": 6, "globex": 5}).items()):
            # Shuffled post days: the split must sort by time, not trust the file order.
            days = list(range(count))
            random.Random(account).shuffle(days)
            for i in range(count):
                image = _draw_image(
                    tmp_path / "data" / "img" / f"{account}-{i}.png", (40 * a, 10 * i, 200)
                )
                records.append(
                    {
                        "id": f"{account}-{i}",
                        "account": account,
                        "posted_at": (start + timedelta(days=days[i])).isoformat(),
                        "text": f"post {i} of {account}",
                        "keywords": ["sale", f"k{i}"],
                        "media": f"img/{image.name}",
                        "kpi_name": kpi_name,
                        "kpi_value": float(10 * (i + 1)),
                    }
                )
        return records

    return make


class CountingFeaturizer:
    """Fake featurizer for wiring tests: records every image it was asked to featurize."""

    def __init__(self, version: str = "fake-1") -> None:
        self._version = version
        self.calls: list[list[str]] = []

    @property
    def version(self) -> str:
        return self._version

    async def featurize(self, images: list[ImageInput]) -> list[Verbalization]:
        self.calls.append([image.id or "" for image in images])
        return [
            Verbalization(
                caption=f"image {image.id}",
                colors=[ColorSwatch(name="blue", rgb=(0, 0, 200), coverage=1.0)],
            )
            for image in images
        ]

    @property
    def featurized(self) -> int:
        return sum(len(call) for call in self.calls)


@pytest.fixture
def featurizer() -> CountingFeaturizer:
    return CountingFeaturizer()


@pytest.fixture
def draw_image() -> Callable[..., Path]:
    return _draw_image


@pytest.fixture
def write_rows() -> Callable[[Records, Path], Path]:
    return _write_rows
