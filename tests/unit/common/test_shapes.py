"""The shape vocabulary: its classes and the outlines that make a drawing one of them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.common.shapes import (
    SHAPE_CLASSES,
    SQUARE_MAX_TURN,
    STAR_INNER_RATIO,
    check_shape_classes,
    shape_polygon,
)


def test_known_classes_pass_and_unknown_ones_are_named() -> None:
    check_shape_classes(SHAPE_CLASSES)
    check_shape_classes([])
    with pytest.raises(ValueError, match=r"\['hexagon'\]"):
        check_shape_classes(["circle", "hexagon"])


@pytest.mark.parametrize(("label", "corners"), [("square", 4), ("triangle", 3), ("star", 10)])
def test_polygons_have_their_corners_on_the_circumcircle(label: str, corners: int) -> None:
    points = shape_polygon(label, 10.0, 0.3)
    assert points.shape == (corners, 2)
    radii = np.hypot(points[:, 0], points[:, 1])
    outer = radii[::2] if label == "star" else radii
    assert outer == pytest.approx(np.full(len(outer), 10.0))
    if label == "star":
        assert radii[1::2] == pytest.approx(np.full(5, 10.0 * STAR_INNER_RATIO))


def test_an_unturned_square_is_upright_and_its_largest_turn_no_diamond() -> None:
    points = shape_polygon("square", math.sqrt(2), 0.0)
    assert sorted(map(tuple, np.round(points, 9))) == [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    assert math.pi / 4 > SQUARE_MAX_TURN  # 45° would be a diamond


def test_a_circle_has_no_polygon() -> None:
    with pytest.raises(ValueError, match="circle"):
        shape_polygon("circle", 1.0, 0.0)
