"""The synthetic shape world: deterministic scenes of known, visible, contrasting shapes."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.colour import srgb_to_lab
from services.common.shapes import SHAPE_CLASSES
from services.trainer.detector import scenes
from services.trainer.detector.scenes import (
    LOW_FILL_CONTRAST,
    MIN_FILL_CONTRAST,
    SHAPE_EXTENT,
    render_example,
    render_scene,
    scene_rng,
)


def test_scenes_are_deterministic_per_seed_split_and_index() -> None:
    first, shapes = render_scene(scene_rng(0, "train", 7))
    again, shapes_again = render_scene(scene_rng(0, "train", 7))
    assert shapes == shapes_again
    assert np.array_equal(np.asarray(first), np.asarray(again))
    other, _ = render_scene(scene_rng(0, "val", 7))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_scenes_hold_one_to_three_known_shapes_inside_the_image() -> None:
    seen: set[str] = set()
    for index in range(60):
        image, shapes = render_scene(scene_rng(3, "test", index), size=128)
        assert image.size == (128, 128) and image.mode == "RGB"
        assert 1 <= len(shapes) <= 3
        for shape in shapes:
            x0, y0, x1, y1 = shape.box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            seen.add(shape.label)
    assert seen == set(SHAPE_CLASSES)


def test_shapes_span_small_icons_to_most_of_the_image_some_cut_by_the_border() -> None:
    low, high = SHAPE_EXTENT
    sides: list[float] = []
    cut = 0
    for index in range(300):
        _, shapes = render_scene(scene_rng(4, "test", index), size=128)
        for shape in shapes:
            x0, y0, x1, y1 = shape.box
            touches = x0 <= 0.5 or y0 <= 0.5 or x1 >= 127.5 or y1 >= 127.5
            cut += touches
            side = max(x1 - x0, y1 - y0)
            # A shape's box side is 0.7-1.0 of its extent; a cut one keeps MIN_VISIBLE of it.
            assert side <= high * 128 + 1
            if not touches:
                assert side >= 0.7 * low * 128 - 1
            sides.append(side)
    assert min(sides) <= 0.15 * 128 and max(sides) >= 0.7 * 128
    assert np.mean(np.array(sides) >= 0.5 * 128) >= 0.1  # large shapes are common, not rare
    assert 0.05 <= cut / len(sides) <= 0.3


def test_negatives_are_shape_free_and_as_common_as_asked() -> None:
    negatives = busy = 0
    for index in range(200):
        image, shapes = render_example(scene_rng(6, "train", index), negative_fraction=0.25)
        again, shapes_again = render_example(scene_rng(6, "train", index), negative_fraction=0.25)
        assert shapes == shapes_again and np.array_equal(np.asarray(image), np.asarray(again))
        assert image.size == (128, 128) and image.mode == "RGB"
        if not shapes:
            negatives += 1
            busy += np.asarray(image).std(axis=(0, 1)).max() > 5.0
    assert 0.15 <= negatives / 200 <= 0.35
    assert busy >= 0.8 * negatives  # textures and distractors, rarely a flat field
    _, shapes = render_example(scene_rng(6, "train", 0), negative_fraction=0.0)
    assert shapes
    _, shapes = render_example(scene_rng(6, "train", 0), negative_fraction=1.0)
    assert not shapes


@pytest.fixture
def flat_world(plain_world: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat grounds only: drawn pixels can be checked against the ground exactly."""
    monkeypatch.setattr(scenes, "BACKGROUND_KINDS", {"flat": 1.0})


@pytest.mark.usefixtures("flat_world")
def test_circles_fill_their_boxes_like_circles() -> None:
    circles = 0
    for index in range(40):
        image, drawn = render_scene(scene_rng(5, "test", index), size=128, max_shapes=1)
        pixels = np.asarray(image).astype(np.float64)
        [shape] = drawn
        x0, y0, x1, y1 = shape.box
        if shape.label != "circle" or x0 < 1 or y0 < 1 or x1 > 127 or y1 > 127:
            continue
        background = pixels[0, 0]
        fill = pixels[round((y0 + y1) / 2), round((x0 + x1) / 2)]
        assert np.abs(fill - background).max() > 3
        # Edges are anti-aliased: a pixel's coverage is its share of the way to the fill.
        box = pixels[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
        direction = (fill - background) / np.dot(fill - background, fill - background)
        coverage = np.clip((box - background) @ direction, 0, 1)
        assert abs(x1 - x0 - (y1 - y0)) <= 1.0
        assert coverage.sum() == pytest.approx(np.pi / 4 * (x1 - x0) * (y1 - y0), rel=0.06)
        circles += 1
    assert circles >= 5


@pytest.mark.usefixtures("flat_world")
def test_fills_contrast_with_the_ground_or_are_deliberately_faint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def contrasts(seed: int) -> list[float]:
        found = []
        for index in range(30):
            image, drawn = render_scene(
                scene_rng(seed, "test", index), max_shapes=1, classes=("circle",)
            )
            pixels = np.asarray(image).astype(np.float64)
            x0, y0, x1, y1 = drawn[0].box
            fill = pixels[round((y0 + y1) / 2), round((x0 + x1) / 2)]
            corners = [pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]]
            ground = next(c for c in corners if np.abs(c - fill).max() > 0)
            found.append(float(np.sqrt(((srgb_to_lab(fill) - srgb_to_lab(ground)) ** 2).sum())))
        return found

    monkeypatch.setattr(scenes, "LOW_CONTRAST_FRACTION", 0.0)
    assert min(contrasts(7)) >= MIN_FILL_CONTRAST - 1
    monkeypatch.setattr(scenes, "LOW_CONTRAST_FRACTION", 1.0)
    low, high = LOW_FILL_CONTRAST
    faint = contrasts(8)
    assert all(low - 1 <= distance <= high + 3 for distance in faint), faint
