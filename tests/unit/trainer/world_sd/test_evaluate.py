"""The evaluation's columns on a tiny trained model with a stand-in featurizer that reports
each image's dominant colour: the real creative matches its own caption, the chance line
(another caption's creative) does not, and every column has every metric it should."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from services.common.contracts import ColorSwatch, Verbalization
from services.generator.tiny_pipeline import prepare_tiny_pipeline
from services.trainer.world_sd.config import tiny_preset
from services.trainer.world_sd.data import CaptionedImage
from services.trainer.world_sd.evaluate import (
    CHANCE,
    FLOOR,
    METRICS,
    REAL,
    ROUND_TRIP,
    TRAINED,
    Sampling,
    evaluate_world_sd,
)
from services.trainer.world_sd.metrics import FidMeter
from services.trainer.world_sd.probe import dominant_rgb
from services.trainer.world_sd.report import colour_goal, write_html
from services.trainer.world_sd.train import train_world_sd


async def dominant_colour_featurizer(images: list[Image.Image]) -> list[Verbalization]:
    return [
        Verbalization(
            colors=[
                ColorSwatch(
                    name="x", rgb=tuple(round(c) for c in dominant_rgb(image)), coverage=1.0
                )
            ]
        )
        for image in images
    ]


def test_columns_and_metrics(creatives: list[CaptionedImage], tmp_path: Path) -> None:
    model = train_world_sd(creatives, tmp_path / "run", tiny_preset()).pipeline_dir
    floor = prepare_tiny_pipeline(tmp_path / "tiny-sd")
    evaluation = asyncio.run(
        evaluate_world_sd(
            creatives[:4],
            trained=model,
            floor=floor,
            reference=creatives[4:],
            featurize=dominant_colour_featurizer,
            fid=FidMeter(),
            sampling=Sampling(samples_per_caption=2, steps=2, batch_size=3),
            resolution=32,
        )
    )
    table = evaluation.table
    assert list(table) == [TRAINED, FLOOR, ROUND_TRIP, REAL, CHANCE]
    assert table[REAL]["colour distance"].value == pytest.approx(0.0)  # type: ignore[union-attr]
    # Consecutive creatives have different backgrounds: the chance line is far off.
    assert table[CHANCE]["colour distance"].value > 100  # type: ignore[union-attr]
    for method in (TRAINED, FLOOR):
        assert [len(group) for group in evaluation.methods[0].images] == [2, 2, 2, 2]
        assert set(table[method]) == set(METRICS)
        assert table[method]["diversity"] is not None
    assert table[REAL]["diversity"] is None  # one image per caption
    assert table[REAL]["shape recall"].value == 0.0  # type: ignore[union-attr]  # no detector
    assert all(row["FID"].n == 4 for row in table.values())  # type: ignore[union-attr]
    assert colour_goal(evaluation) is not None
    page = write_html(evaluation, tmp_path / "report.html").read_text()
    assert page.count("<img ") == 4 * (1 + 1 + 2 + 2)
