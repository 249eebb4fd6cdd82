"""The judge's measurement of a generated image: the :class:`CreativeAttributes` the hidden
ground truth reads, measured independently of the reward's featurizer.

The reward sees an image through the featurizer (k-means palette, tone words, the shapes
detector). A policy trained on that reward may learn to please that measurement rather than
to draw what the world's audience likes, so the judge measures differently:

- **palette**: the exact colour histogram, every distinct pixel colour with the share of the
  image it covers (no clustering, no rounding): the ground truth's coverage-weighted colour
  match then averages over every pixel;
- **tones**: the world's own tone statistics (:func:`~services.trainer.world.render.tone_stats`)
  over every pixel;
- **objects**: a second detector, trained on other images (another seed) with another width,
  served by a featurizer process of its own; only its labels and boxes are read;
- **text**: none. Nothing here reads text in pixels, and at 64 px no model of this world draws
  legible text, so every method gets the same (absent) text term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from services.common.contracts import DetectedObject
from services.trainer.world.render import (
    TONE_SAMPLE_STRIDE,
    CreativeAttributes,
    DrawnObject,
    PaletteEntry,
    tone_stats,
)


def colour_histogram(image: Image.Image) -> tuple[PaletteEntry, ...]:
    """Every distinct colour of ``image`` with its pixel share, largest first."""
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = float(pixels.shape[0])
    return tuple(
        PaletteEntry(
            rgb=(int(colours[i, 0]), int(colours[i, 1]), int(colours[i, 2])),
            coverage=float(counts[i]) / total,
        )
        for i in order
    )


def every_pixel_tones(image: Image.Image) -> Image.Image:
    """``image`` enlarged (nearest neighbour) so that ``tone_stats``, which reads every
    ``TONE_SAMPLE_STRIDE``-th pixel of the world's 256 px creatives, reads each pixel of a
    small generated image exactly once."""
    rgb = image.convert("RGB")
    return rgb.resize(
        (rgb.width * TONE_SAMPLE_STRIDE, rgb.height * TONE_SAMPLE_STRIDE),
        Image.Resampling.NEAREST,
    )


def measured_objects(
    image: Image.Image, found: Sequence[DetectedObject]
) -> tuple[DrawnObject, ...]:
    """The judge detector's objects as drawn-object records (label, box; the fill is the mean
    colour inside the box and the area the box's share of the image, for reports only)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = pixels.shape[:2]
    objects = []
    for obj in found:
        x0, y0, x1, y1 = obj.box
        region = pixels[
            int(y0 * height) : max(int(y0 * height) + 1, int(np.ceil(y1 * height))),
            int(x0 * width) : max(int(x0 * width) + 1, int(np.ceil(x1 * width))),
        ].reshape(-1, 3)
        mean = np.round(region.mean(axis=0)).astype(int)
        objects.append(
            DrawnObject(
                label=obj.label,
                rgb=(int(mean[0]), int(mean[1]), int(mean[2])),
                box=(x0, y0, x1, y1),
                area=float((x1 - x0) * (y1 - y0)),
            )
        )
    return tuple(objects)


def measure(image: Image.Image, found: Sequence[DetectedObject]) -> CreativeAttributes:
    """What the ground truth needs to know about ``image``, given the judge detector's
    objects ``found`` in it."""
    rgb = image.convert("RGB")
    return CreativeAttributes(
        size=rgb.width,
        palette=colour_histogram(rgb),
        tones=tone_stats(every_pixel_tones(rgb)),
        objects=measured_objects(rgb, found),
        text=None,
    )
