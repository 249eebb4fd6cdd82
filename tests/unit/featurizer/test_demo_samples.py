"""The default shapes detector on the bundled demo creatives, which it is never trained on.

The drawn creatives hold shapes at scales and contrasts of real ads (a star filling most of the
image, a light grey triangle on a slightly darker grey); the photos hold no shape at all, and
a detector that sees stars in them would poison the object reward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from services.common.geometry import box_iou
from services.demo.make_samples import SAMPLES
from services.featurizer.backends.yolo import YoloDetector

Box = tuple[float, float, float, float]

# The shapes make_samples.py draws, as (label, pixel box) on its 256 px canvas.
DRAWN: dict[str, list[tuple[str, Box]]] = {
    "sunny-circle.png": [("circle", (60, 40, 196, 176))],
    "night-squares.png": [("square", (40, 60, 120, 140)), ("square", (140, 120, 220, 200))],
    "grey-triangle.png": [("triangle", (48, 50, 208, 190))],
    "gold-star.png": [("star", (42.4, 38.0, 213.6, 200.8))],  # radius 90 around (128, 128)
    "garden-mix.png": [("circle", (30, 30, 110, 110)), ("triangle", (110, 120, 230, 230))],
}
PHOTOS = ("cat-photo.jpg", "coffee-photo.jpg")


def _detect(detector: YoloDetector, name: str) -> tuple[list[tuple[str, float, Box]], int, int]:
    with Image.open(SAMPLES / name) as image:
        rgb = image.convert("RGB")
    [objects] = detector.detect([rgb])
    return [(o.label, o.confidence, o.box) for o in objects], rgb.width, rgb.height


@pytest.mark.parametrize("name", sorted(DRAWN))
def test_finds_each_drawn_shape_and_nothing_else(shape_detector: YoloDetector, name: str) -> None:
    found, width, height = _detect(shape_detector, name)
    unmatched = list(found)
    for label, (x0, y0, x1, y1) in DRAWN[name]:
        truth = (x0 / width, y0 / height, x1 / width, y1 / height)
        hits = [o for o in unmatched if o[0] == label and box_iou(o[2], truth) >= 0.5]
        assert hits, f"{name}: no {label} near {truth}; found {found}"
        unmatched.remove(max(hits, key=lambda o: o[1]))
    assert all(confidence < 0.4 for _, confidence, _ in unmatched), found


@pytest.mark.parametrize("name", PHOTOS)
def test_sees_no_shapes_in_photos(shape_detector: YoloDetector, name: str) -> None:
    found, _, _ = _detect(shape_detector, name)
    # At most one guess, and not a confident one: the coffee photo's cup, seen from above, is
    # round, and a detector trained on this machine rates it a circle at 0.47.
    assert len(found) <= 1 and all(confidence < 0.5 for _, confidence, _ in found), found


def test_samples_are_where_the_demo_keeps_them() -> None:
    assert all((SAMPLES / name).is_file() for name in (*DRAWN, *PHOTOS)), Path(SAMPLES)
