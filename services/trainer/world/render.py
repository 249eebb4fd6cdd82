"""Procedural creatives: a flat or gradient ground, 0–3 shapes, optional overlay text.

:func:`render_creative` draws a :class:`CreativeSpec` and returns the image together with a
:class:`CreativeAttributes` record of what was drawn (palette with coverage, tone statistics,
objects with boxes, text), so the ground truth scores attributes rather than pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from services.common.colour import ToneStats, srgb_to_lab, tone_stats_from_lab
from services.common.geometry import Box
from services.common.shapes import shape_polygon
from services.trainer.world.brands import RGB

SUPERSAMPLE = 2
"""Drawn this many times larger, then box-filtered down: anti-aliased edges."""
TONE_SAMPLE_STRIDE = 4
"""Tone statistics read every 4th pixel of the final image in each direction: enough for
flat-coloured creatives, and 16 times cheaper than all of them."""
TEXT_HEIGHT = 0.09
"""Overlay text height as a fraction of the image side (at most; long text is shrunk to fit)."""


@dataclass(frozen=True)
class ShapeSpec:
    """A filled shape to draw: class, colour, centre and circumradius as image fractions."""

    label: str
    rgb: RGB
    center: tuple[float, float]
    radius: float
    rotation: float
    """Radians; a square turns by at most ±20° (turned 45° it reads as a diamond)."""


@dataclass(frozen=True)
class CreativeSpec:
    """Everything that determines a creative's pixels."""

    background: tuple[RGB, ...]
    """One colour (flat) or two (a linear gradient from the first to the second)."""
    gradient_angle: float
    shapes: tuple[ShapeSpec, ...]
    text: str | None = None
    text_rgb: RGB = (255, 255, 255)
    text_top: float = 0.82
    """Top of the text line as a fraction of the image height."""


@dataclass(frozen=True)
class PaletteEntry:
    """A drawn region's mean colour and the fraction of the image it covers."""

    rgb: RGB
    coverage: float


@dataclass(frozen=True)
class DrawnObject:
    """A visible shape: class, fill, tight box of its visible pixels ``[x0,y0,x1,y1]`` in
    [0, 1], and the fraction of the image it covers."""

    label: str
    rgb: RGB
    box: Box
    area: float


@dataclass(frozen=True)
class CreativeAttributes:
    """What a creative was drawn with: the only input the ground truth reads."""

    size: int
    palette: tuple[PaletteEntry, ...]
    """Largest first; coverages sum to 1."""
    tones: ToneStats
    objects: tuple[DrawnObject, ...]
    text: str | None


def tone_stats(image: Image.Image) -> ToneStats:
    """Lightness, contrast, chroma and warmth of an RGB image (every 4th pixel), with the
    featurizer's hue votes, so that "warm" in the world means what the featurizer calls warm."""
    pixels = np.asarray(image.convert("RGB"))[::TONE_SAMPLE_STRIDE, ::TONE_SAMPLE_STRIDE]
    # Unlike the featurizer, no achromatic cut-off: the world's files (and their KPIs) were
    # generated without it, so a grey creative's warmth is the vote of its rounding noise.
    # Adopting the cut-off changes what a seed generates (a GENERATOR_VERSION bump).
    return tone_stats_from_lab(srgb_to_lab(pixels.reshape(-1, 3)), achromatic_chroma=0.0)


def render_creative(
    spec: CreativeSpec, *, size: int = 256
) -> tuple[Image.Image, CreativeAttributes]:
    """Draw ``spec`` at ``size`` × ``size`` pixels; deterministic (no randomness inside)."""
    if not spec.background or len(spec.background) > 2:
        raise ValueError("background needs one (flat) or two (gradient) colours")
    big = size * SUPERSAMPLE
    canvas, layers = _background(spec, big)
    # Each region drawn gets a layer id: 0/1 the two halves of the ground, 2.. the shapes in
    # drawing order, then the text. Coverage and visible boxes are read from this map, so
    # a shape partly hidden by a later one is reported as it is seen.
    layer_colors: dict[int, RGB] = {}
    for index, shape in enumerate(spec.shapes):
        mask = _shape_mask(shape, big)
        canvas[mask] = shape.rgb
        layers[mask] = 2 + index
        layer_colors[2 + index] = shape.rgb
    text_layer = 2 + len(spec.shapes)
    if spec.text:
        mask = _text_mask(spec.text, spec.text_top, big)
        canvas[mask] = spec.text_rgb
        layers[mask] = text_layer
        layer_colors[text_layer] = spec.text_rgb
    image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    image = image.resize((size, size), Image.Resampling.BOX)

    counts = np.bincount(layers.ravel(), minlength=text_layer + 1)
    total = float(layers.size)
    palette: list[PaletteEntry] = []
    for layer in range(text_layer + 1):
        if counts[layer] == 0:
            continue
        rgb = layer_colors.get(layer) or _mean_rgb(canvas[layers == layer])
        palette.append(PaletteEntry(rgb=rgb, coverage=float(counts[layer]) / total))
    palette.sort(key=lambda entry: -entry.coverage)
    objects = tuple(
        obj
        for index, shape in enumerate(spec.shapes)
        if (obj := _visible_object(shape, layers == 2 + index, big)) is not None
    )
    attributes = CreativeAttributes(
        size=size,
        palette=tuple(palette),
        tones=tone_stats(image),
        objects=objects,
        text=spec.text or None,
    )
    return image, attributes


def shape_outline(shape: ShapeSpec, big: int) -> NDArray[np.float64]:
    """Vertices (N, 2) in pixels of a polygonal shape on a ``big``-pixel canvas."""
    center = np.array(shape.center) * big
    points: NDArray[np.float64] = center + shape_polygon(
        shape.label, shape.radius * big, shape.rotation
    )
    return points


def _background(spec: CreativeSpec, big: int) -> tuple[NDArray[np.float64], NDArray[np.int16]]:
    start = np.array(spec.background[0], dtype=np.float64)
    if len(spec.background) == 1:
        return np.broadcast_to(start, (big, big, 3)).copy(), np.zeros((big, big), np.int16)
    end = np.array(spec.background[1], dtype=np.float64)
    ys, xs = np.mgrid[0:big, 0:big]
    ramp = xs * math.cos(spec.gradient_angle) + ys * math.sin(spec.gradient_angle)
    ramp = (ramp - ramp.min()) / max(1e-9, float(ramp.max() - ramp.min()))
    canvas = start + ramp[..., None] * (end - start)
    # The gradient's two halves are reported as two palette entries (their mean colours),
    # which is roughly what a clustering featurizer sees in a two-colour gradient.
    return canvas, (ramp >= 0.5).astype(np.int16)


def _shape_mask(shape: ShapeSpec, big: int) -> NDArray[np.bool_]:
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape.label == "circle":
        cx, cy = shape.center[0] * big, shape.center[1] * big
        radius = shape.radius * big
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    else:
        draw.polygon([(float(x), float(y)) for x, y in shape_outline(shape, big)], fill=255)
    return np.asarray(mask) > 0


@lru_cache(maxsize=16)
def _font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: the same glyphs on every machine with the same Pillow, which
    # keeps images byte-identical without depending on system fonts.
    return ImageFont.load_default(size=pixels)


def _text_mask(text: str, top: float, big: int) -> NDArray[np.bool_]:
    pixels = max(8, int(TEXT_HEIGHT * big))
    width = _font(pixels).getlength(text)
    if width > 0.9 * big:
        pixels = max(8, int(pixels * 0.9 * big / width))
        width = _font(pixels).getlength(text)
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).text(((big - width) / 2, top * big), text, fill=255, font=_font(pixels))
    return np.asarray(mask) > 127


def _mean_rgb(pixels: NDArray[np.float64]) -> RGB:
    mean = np.round(pixels.mean(axis=0)).astype(int)
    return (int(mean[0]), int(mean[1]), int(mean[2]))


def _visible_object(shape: ShapeSpec, visible: NDArray[np.bool_], big: int) -> DrawnObject | None:
    if not visible.any():
        return None  # entirely hidden by later layers: not an object anyone can see
    rows = np.nonzero(visible.any(axis=1))[0]
    cols = np.nonzero(visible.any(axis=0))[0]
    box = (cols[0] / big, rows[0] / big, (cols[-1] + 1) / big, (rows[-1] + 1) / big)
    return DrawnObject(
        label=shape.label,
        rgb=shape.rgb,
        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        area=float(visible.sum()) / float(visible.size),
    )
