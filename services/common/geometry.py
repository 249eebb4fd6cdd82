"""Box geometry shared by the scorer's object agreement and the trainer's evaluation."""

from __future__ import annotations

Box = tuple[float, float, float, float]
"""Normalized ``(x0, y0, x1, y1)``, origin top-left."""


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes.

    Boxes carry two decimals, so a tiny object can collapse to zero area; two such boxes
    score 1.0 when identical and 0.0 otherwise rather than dividing by zero.
    """
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    intersection = max(0.0, width) * max(0.0, height)
    union = _area(a) + _area(b) - intersection
    if union <= 0.0:
        return 1.0 if a == b else 0.0
    return intersection / union


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])
