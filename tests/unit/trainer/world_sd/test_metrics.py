"""Image metrics on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.common.contracts import DetectedObject, Verbalization
from services.trainer.world_sd.metrics import (
    FidMeter,
    frechet_distance,
    mean_pairwise_distance,
    prompted_shape_recall,
)
from services.trainer.world_sd.probe import dominant_rgb


def objects(*labels: str) -> Verbalization:
    return Verbalization(
        objects=[
            DetectedObject(label=label, confidence=0.9, box=(0.1 * i, 0.1, 0.1 * i + 0.1, 0.3))
            for i, label in enumerate(labels)
        ]
    )


@pytest.mark.parametrize(
    ("asked", "found", "expected"),
    [
        (("circle",), ("circle",), 1.0),
        (("circle", "star"), ("star",), 0.5),
        (("circle", "circle"), ("circle",), 0.5),  # two asked need two found
        (("circle",), ("circle", "circle", "square"), 1.0),  # extras cost nothing here
        (("circle",), (), 0.0),
        ((), ("circle",), None),  # nothing asked: not scored
    ],
)
def test_shape_recall_counts_prompted_shapes_as_a_multiset(
    asked: tuple[str, ...], found: tuple[str, ...], expected: float | None
) -> None:
    assert prompted_shape_recall(objects(*asked), objects(*found)) == expected


def test_shape_recall_asks_only_for_the_objects_a_prompt_can_name() -> None:
    many = objects(*(["circle"] * 7))  # the prompt names the 5 most prominent
    assert prompted_shape_recall(many, objects(*(["circle"] * 5))) == 1.0


def test_pairwise_distance_is_zero_for_copies_and_one_from_black_to_white() -> None:
    black, white = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert mean_pairwise_distance([black, black.copy()]) == 0.0
    assert mean_pairwise_distance([black, white]) == pytest.approx(1.0)
    # Three images: pairs (b, b) 0, (b, w) 1, (b, w) 1 -> 2/3.
    assert mean_pairwise_distance([black, black, white]) == pytest.approx(2 / 3)
    assert mean_pairwise_distance([black]) is None


def test_dominant_colour_is_the_background_under_a_shape() -> None:
    image = Image.new("RGB", (64, 64), (20, 30, 90))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(240, 200, 40))
    assert dominant_rgb(image) == pytest.approx((20, 30, 90))


def _flat_set(base: tuple[int, int, int], count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        jitter = rng.integers(-25, 26, size=3)
        colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(base, jitter, strict=True))
        image = Image.new("RGB", (32, 32), colour)
        x, y = (int(v) for v in rng.integers(2, 18, size=2))
        ImageDraw.Draw(image).rectangle((x, y, x + 12, y + 12), fill=(250, 250, 250))
        images.append(image)
    return images


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form() -> None:
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([4.0, 1.0, 0.0]), np.array([1.0, 9.0, 0.0])  # singular on axis 3
    expected = 1.0 + 4.0 + ((2 - 1) ** 2 + (1 - 3) ** 2)
    got = frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b))
    assert got == pytest.approx(expected)
    assert frechet_distance(mean_a, np.diag(var_a), mean_a, np.diag(var_a)) == pytest.approx(0)


def test_fid_is_near_zero_for_one_distribution_and_large_for_another() -> None:
    fid = FidMeter()
    reference = fid.statistics(_flat_set((40, 60, 160), 16, seed=0))
    same = fid.distance(reference, _flat_set((40, 60, 160), 16, seed=1))
    other = fid.distance(reference, _flat_set((200, 60, 30), 16, seed=2))
    identical = fid.distance(reference, _flat_set((40, 60, 160), 16, seed=0))
    assert abs(identical) < 1e-3
    assert other > 3 * same
    with pytest.raises(ValueError, match="two images"):
        fid.statistics(_flat_set((0, 0, 0), 1, seed=0))
