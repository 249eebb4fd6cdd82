"""Fixtures of the world SD tests: a handful of flat-colour creatives with captions, and one
torch thread (the tiny models' ops take microseconds; a second thread only adds sync cost)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from services.common.contracts import ColorSwatch, Context, DetectedObject, Verbalization
from services.trainer.world_sd.data import CaptionedImage

COLOURS = {"red": (220, 30, 30), "navy": (20, 30, 90), "gold": (230, 190, 40)}


def make_creatives(folder: Path, count: int = 6) -> list[CaptionedImage]:
    folder.mkdir(parents=True, exist_ok=True)
    creatives = []
    names = list(COLOURS)
    for index in range(count):
        name = names[index % len(names)]
        rgb = COLOURS[name]
        image = Image.new("RGB", (64, 64), rgb)
        ImageDraw.Draw(image).ellipse((20, 20, 44, 44), fill=(255, 255, 255))
        path = folder / f"post-{index}.png"
        image.save(path)
        description = Verbalization(
            colors=[
                ColorSwatch(name=name, rgb=rgb, coverage=0.86),
                ColorSwatch(name="white", rgb=(255, 255, 255), coverage=0.14),
            ],
            objects=[DetectedObject(label="circle", confidence=0.9, box=(0.3, 0.3, 0.7, 0.7))],
        )
        creatives.append(
            CaptionedImage(
                id=f"post-{index}",
                media=path,
                context=Context(account="acme", text="sale"),
                level="high",
                description=description,
                caption=f"sale, a circle in the centre, mostly {name} background",
            )
        )
    return creatives


@pytest.fixture
def creatives(tmp_path: Path) -> list[CaptionedImage]:
    return make_creatives(tmp_path / "media")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
