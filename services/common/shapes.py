"""The shape vocabulary: the object classes of the featurizer's default detector, which the
synthetic worlds draw, and the outlines that make a drawing one of them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""The detector is trained on exactly these (in this order: its class ids), and the world draws
only these, so the detector can see every object the world's ground truth rewards."""
STAR_INNER_RATIO = 0.45
"""Inner to outer radius of the five-pointed star."""
SQUARE_MAX_TURN = math.pi / 9
"""A square turns by at most ±20°: turned by 45° it is a diamond, which reads as another shape."""


def check_shape_classes(labels: Iterable[str]) -> None:
    """Refuse object classes the worlds do not draw (and the detector could not see)."""
    unknown = set(labels) - set(SHAPE_CLASSES)
    if unknown:
        raise ValueError(f"unknown object classes {sorted(unknown)}; known: {SHAPE_CLASSES}")


def shape_polygon(label: str, radius: float, rotation: float) -> NDArray[np.float64]:
    """Vertices (N, 2) of a square, triangle or star of circumradius ``radius`` around the
    origin, turned by ``rotation`` radians (a circle has no polygon: draw it as an ellipse)."""
    if label == "square":
        angles = rotation + math.pi / 4 + np.arange(4) * math.pi / 2
        radii = np.full(4, radius)
    elif label == "triangle":
        angles = rotation + np.arange(3) * 2 * math.pi / 3
        radii = np.full(3, radius)
    elif label == "star":
        angles = rotation + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, STAR_INNER_RATIO * radius)
    else:
        raise ValueError(f"no polygon for {label!r}; known: {', '.join(SHAPE_CLASSES)}")
    points: NDArray[np.float64] = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return points
