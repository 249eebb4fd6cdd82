"""Box geometry shared by the scorer's object agreement, the trainer's evaluation and the
synthetic worlds' shape placement."""

from __future__ import annotations

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)``, origin top-left: normalized on the wire, pixels in the shape world."""


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes in the same units.

    Two zero-area boxes (their union is empty) score 1.0 when identical and 0.0 otherwise.
    Wire boxes carry two decimals, so a tiny object can collapse to a line or a point; a
    description that reproduces that box exactly is right and must not score as a miss, and
    identical boxes score 1.0 at every positive size, so 1.0 is also the limit as they shrink.
    Any other pair with a zero-area box shares no area: 0.0, as the formula gives.
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
