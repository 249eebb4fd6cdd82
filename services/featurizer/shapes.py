"""A synthetic shape world and the small YOLO detector trained on it (design §7).

No COCO weights can be downloaded on development and CI machines, so the featurizer's
default detector is trained here, on CPU, from ultralytics' bundled YOLOv8 yaml narrowed to
~0.9 M parameters, on seeded images of filled circles, squares, triangles and stars (from
icons to most of the image, some faint, some cut by the border, on flat, gradient and textured
grounds among non-shape distractors) and of shape-free textures that teach it "background".
Prepared detectors are cached by a hash of their config:
``python -m services.featurizer.shapes --out DIR``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image, ImageDraw, ImageFilter

from services.common.settings import boig_home
from services.featurizer.colors import srgb_to_lab
from services.featurizer.ultralytics_setup import import_ultralytics

logger = logging.getLogger(__name__)

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
GENERATOR_VERSION = 2
"""Bump when the images change for the same seed: it is part of the cache key."""
MANIFEST = "manifest.json"
WEIGHTS = "best.pt"
MANIFEST_FORMAT = 1

SHAPE_EXTENT = (0.10, 0.85)
"""Range of a shape's size (its circumscribed circle's diameter) as a fraction of the image
side, drawn uniformly: small icons and shapes filling most of a creative alike. (Drawn
log-uniformly, half the shapes were under a third of the side and recall on those lagged.)"""
CUT_FRACTION = 0.15
"""Share of shapes placed anywhere, so that the border may cut them."""
MIN_VISIBLE = 0.6
"""Least share of a shape's area that is visible (not cut off by the border)."""
MIN_FILL_CONTRAST = 30.0
"""Least CIE76 distance (Lab units) between a shape's fill and the background under it."""
LOW_CONTRAST_FRACTION = 0.2
"""Share of shapes on plain (flat or gradient) grounds drawn in low contrast instead."""
LOW_FILL_CONTRAST = (6.0, 20.0)
"""CIE76 distance range of a low-contrast fill from the mean ground under it (~2.3 is just
noticeable; a light grey on a slightly darker grey is ~7)."""
MAX_BOX_IOU = 0.1
"""Shapes may touch, or a small one sit on a large one, but a box overlaps another by at most
this IoU."""
MAX_COVERED = 0.05
"""Most of a shape's pixels a later shape may cover."""
BACKGROUND_KINDS = {"flat": 0.3, "gradient": 0.35, "texture": 0.35}
"""Grounds of scenes with shapes; negatives are mostly textures."""
TEXTURE_KINDS = {"noise": 0.2, "stripes": 0.2, "blotches": 0.25, "photo": 0.35}
DISTRACTOR_FRACTION = 0.3
"""Share of scenes with 1-3 distractors (non-shapes) drawn on the ground under the shapes."""
SUPERSAMPLE = 2
"""Scenes are drawn this many times larger and box-filtered down: anti-aliased edges."""
BLUR_FRACTION = 0.15
JPEG_FRACTION = 0.3

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class DrawnShape:
    """A shape in a generated image: its class and tight pixel box ``(x0, y0, x1, y1)``."""

    label: str
    box: Box


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that determines the prepared detector; its hash is the cache key."""

    image_size: int = 128
    """Side of the generated images and the training/inference size, in pixels."""
    train_images: int = 900
    val_images: int = 150
    max_shapes: int = 3
    negative_fraction: float = 0.3
    """Share of images with no shape (textures, distractors): they teach "background"."""
    seed: int = 0
    epochs: int = 50
    """50 epochs of 900 images: ~420 s on 2 idle CPU cores (515 s shared) to mAP50 0.82 on
    this world's val set, which holds faint, tiny, cut and textured shapes and shape-free
    images. 38 epochs reached 0.78-0.79, and on one machine saw a star at 0.52 in the demo's
    coffee photo (its spoon); at 50 the same machine sees at most a circle at 0.47 there
    (the cup's round rim)."""
    batch: int = 16
    nominal_batch: int = 16
    """Images per optimizer step (ultralytics' ``nbs``: it accumulates gradients over
    ``nominal_batch / batch`` batches). Its default of 64 leaves only ~500 steps in a CPU
    budget; with one step per batch (together with ``scale_augment`` 0.25 and uniformly drawn
    shape sizes) val mAP50 after 35 epochs of 900 images rose from 0.42 to 0.75."""
    depth_multiple: float = 0.33
    width_multiple: float = 0.125
    """Channel multiple on yolov8.yaml: 0.25 is yolov8n (3.0 M params); 0.125 gives ~0.9 M,
    which learns this world as well and runs about twice as fast on CPU."""
    max_channels: int = 1024
    scale_augment: float = 0.25
    """ultralytics' random zoom gain (its default 0.5): the generator already spans scales, and
    zooming a 13 px shape out by half leaves it unrecognisable."""
    mosaic: float = 0.0
    """Probability of ultralytics' 4-image mosaic augmentation. Off: at 128 px a mosaic shrinks
    shapes to a scale never seen at inference; with it (generator v1), 30 epochs reached only
    mAP50 0.75."""
    device: str = "cpu"
    """Training device. Results are cached per config, so a GPU-trained model is another key."""
    classes: tuple[str, ...] = SHAPE_CLASSES

    def key(self) -> str:
        """Content hash of the config and generator version: names a cached detector."""
        payload = json.dumps(
            {"config": dataclasses.asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


DEFAULT_CONFIG = DetectorConfig()


def default_detector_dir() -> Path:
    """Where ``make models`` puts the detector and where the featurizer looks by default."""
    return boig_home() / "models" / "yolo-shapes"


# --- the shape world ---------------------------------------------------------------------
#
# Version 2 of the world is built to generalise beyond itself: shapes from a tenth of the
# image to most of it, some cut by the border, some barely darker or lighter than what lies
# under them, on flat, gradient and procedurally textured backgrounds, among distractors
# (blurred blobs, bars, strokes, potato-like outlines) that are not shapes, and a share of
# images with no shape at all, so the detector learns what background looks like. Scenes are
# drawn at twice their size and box-filtered down (anti-aliased edges, like a resized photo);
# some are then blurred or JPEG-compressed.


def render_example(
    rng: np.random.Generator,
    *,
    size: int = 128,
    max_shapes: int = 3,
    classes: tuple[str, ...] = SHAPE_CLASSES,
    negative_fraction: float = 0.0,
) -> tuple[Image.Image, list[DrawnShape]]:
    """A training image: a shape-free background with ``negative_fraction``, else a scene."""
    if rng.random() < negative_fraction:
        return render_negative(rng, size=size), []
    return render_scene(rng, size=size, max_shapes=max_shapes, classes=classes)


def render_scene(
    rng: np.random.Generator,
    *,
    size: int = 128,
    max_shapes: int = 3,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> tuple[Image.Image, list[DrawnShape]]:
    """One image with 1..``max_shapes`` filled shapes on a flat, gradient or textured ground.

    Every returned shape is at least :data:`MIN_VISIBLE` visible (the border may cut it,
    other shapes hardly cover it) and its box is the tight box of its drawn pixels.
    """
    big = size * SUPERSAMPLE
    kind = _choice(rng, BACKGROUND_KINDS)
    canvas = _texture(rng, big) if kind == "texture" else _plain_background(rng, big, kind)
    if rng.random() < DISTRACTOR_FRACTION:
        _draw_distractors(rng, canvas, count=int(rng.integers(1, 4)))
    masks: list[np.ndarray] = []
    shapes: list[DrawnShape] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(30):
            label = classes[int(rng.integers(len(classes)))]
            placed = _place_shape(label, rng, big)
            if placed is None:
                continue
            mask, box = placed
            if all(_iou(box, other.box) <= MAX_BOX_IOU for other in shapes) and all(
                _hides(mask, other) for other in masks
            ):
                break
        else:
            continue  # no free spot left; fewer shapes is fine
        low_contrast = kind != "texture" and rng.random() < LOW_CONTRAST_FRACTION
        canvas[mask] = _fill_for(rng, _samples_under(rng, canvas, mask), low_contrast=low_contrast)
        masks.append(mask)
        shapes.append(DrawnShape(label=label, box=box))
    image = _finish(rng, canvas, size)
    scaled = [
        DrawnShape(label=shape.label, box=_scale_box(shape.box, 1 / SUPERSAMPLE))
        for shape in shapes
    ]
    return image, scaled


def render_negative(rng: np.random.Generator, *, size: int = 128) -> Image.Image:
    """An image with no shape: a texture or plain ground, usually with distractors on it."""
    big = size * SUPERSAMPLE
    if rng.random() < 0.75:
        canvas = _texture(rng, big)
    else:
        canvas = _plain_background(rng, big, _choice(rng, ("flat", "gradient")))
    if rng.random() < 0.7:
        _draw_distractors(rng, canvas, count=int(rng.integers(1, 7)))
    return _finish(rng, canvas, size)


def _choice(rng: np.random.Generator, weighted: tuple[str, ...] | dict[str, float]) -> str:
    if isinstance(weighted, dict):
        names = list(weighted)
        weights = np.array([weighted[name] for name in names], dtype=np.float64)
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return weighted[int(rng.integers(len(weighted)))]


def _finish(rng: np.random.Generator, canvas: np.ndarray, size: int) -> Image.Image:
    """Down-sample the supersampled canvas, then maybe blur it or pass it through JPEG."""
    image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    image = image.resize((size, size), Image.Resampling.BOX)
    if rng.random() < BLUR_FRACTION:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    if rng.random() < JPEG_FRACTION:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(35, 91)))
        buffer.seek(0)
        with Image.open(buffer) as compressed:
            image = compressed.convert("RGB")
    return image


# Backgrounds are float (H, W, 3) arrays in 0..255, drawn on in place.


def _plain_background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A flat colour, or a linear gradient at a random angle."""
    start = rng.integers(0, 256, 3).astype(np.float64)
    if kind == "flat":
        return np.broadcast_to(start, (size, size, 3)).copy()
    end = rng.integers(0, 256, 3).astype(np.float64)
    return _colorize(_ramp(rng, size), np.stack([start, end]))


def _ramp(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size]
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    normalized: np.ndarray = (ramp - ramp.min()) / max(1e-9, float(ramp.max() - ramp.min()))
    return normalized


def _colorize(values: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H, W) through evenly spaced ``colors`` (K, 3) to (H, W, 3)."""
    stops = np.linspace(0.0, 1.0, len(colors))
    return np.stack([np.interp(values, stops, colors[:, c]) for c in range(3)], axis=-1)


def _random_colors(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, (count, 3)).astype(np.float64)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) values near [0, 1]: uniform noise on a ``cells`` grid, bicubic-upsampled."""
    grid = rng.random((cells, cells)).astype(np.float32)
    upsampled = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(upsampled, dtype=np.float64)


def _fractal_noise(rng: np.random.Generator, size: int, octaves: int) -> np.ndarray:
    """Octaves of smooth noise, each twice as fine and ``persistence`` as strong; in [0, 1]."""
    cells = int(rng.integers(2, 6))
    persistence = rng.uniform(0.35, 0.8)
    total = np.zeros((size, size))
    amplitude = 1.0
    for _ in range(octaves):
        total += amplitude * _smooth_noise(rng, size, min(cells, size))
        cells *= 2
        amplitude *= persistence
    return _normalize(total)


def _normalize(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    normalized: np.ndarray = (values - low) / max(1e-9, high - low)
    return normalized


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural texture: noise, stripes, blotches or a photo-like mixture of them."""
    kind = _choice(rng, TEXTURE_KINDS)
    if kind == "noise":
        values = _fractal_noise(rng, size, int(rng.integers(2, 7)))
        return _colorize(values, _random_colors(rng, int(rng.integers(2, 5))))
    if kind == "stripes":
        return _stripes(rng, size)
    if kind == "blotches":
        return _blotches(rng, size)
    return _photo_like(rng, size)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    period = rng.uniform(0.03, 0.3) * size
    warp = rng.uniform(0.0, 1.5) * period * (_fractal_noise(rng, size, 3) - 0.5)
    phase = 2 * math.pi * (_ramp(rng, size) * size / period) + 2 * math.pi * warp / period
    values = (np.sin(phase) + 1) / 2
    if rng.random() < 0.5:
        values = (values > rng.uniform(0.3, 0.7)).astype(np.float64)  # hard-edged bands
    return _colorize(values, _random_colors(rng, 2))


def _blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blurred random-coloured ellipses and polygons over a ground: camouflage, bokeh."""
    image = Image.fromarray(_plain_background(rng, size, "flat").astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 40))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.03, 0.3, 2) * size
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=color)
        else:
            draw.polygon([(float(x), float(y)) for x, y in _blob(rng, cx, cy, rx)], fill=color)
    blurred = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.02, 0.06)) * size))
    return np.asarray(blurred, dtype=np.float64)


def _photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft shading, blotches, directional high-frequency grain and a few hard strokes."""
    shading = _colorize(
        _fractal_noise(rng, size, int(rng.integers(3, 6))),
        _random_colors(rng, int(rng.integers(2, 4))),
    )
    mix = rng.uniform(0.2, 0.6)
    canvas = (1 - mix) * shading + mix * _blotches(rng, size)
    # Grain stretched along one axis (fur, wood, fabric), at a random strength.
    stretch = int(rng.integers(1, 8))
    grain = rng.normal(0.0, 1.0, (size, max(1, size // stretch))).astype(np.float32)
    streaks = np.asarray(
        Image.fromarray(grain).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64
    )
    if rng.random() < 0.5:
        streaks = streaks.T
    canvas += rng.uniform(3.0, 30.0) * streaks[..., None]
    if rng.random() < 0.7:
        _draw_strokes(rng, canvas, count=int(rng.integers(1, 8)))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    softened = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))
    return np.asarray(softened, dtype=np.float64)


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """A potato: a closed outline whose radius wanders by 10-35 % (never a circle)."""
    angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    radii = np.ones_like(angles)
    for harmonic in (2, 3, 4):
        radii += (
            rng.uniform(0.1, 0.35)
            / (harmonic - 1)
            * np.cos(harmonic * angles + rng.uniform(0, 2 * math.pi))
        )
    radii = radius * np.clip(radii, 0.3, None)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _draw_strokes(rng: np.random.Generator, canvas: np.ndarray, *, count: int) -> None:
    size = canvas.shape[0]
    layer = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    for _ in range(count):
        points = rng.uniform(-0.1, 1.1, (int(rng.integers(2, 6)), 2)) * size
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        width = int(rng.integers(1, max(2, size // 40)))
        draw.line([(float(x), float(y)) for x, y in points], fill=color, width=width)
    canvas[...] = np.asarray(layer, dtype=np.float64)


def _draw_distractors(rng: np.random.Generator, canvas: np.ndarray, *, count: int) -> None:
    """Things that are not shapes: potatoes, elongated bars and ellipses, strokes and soft
    blobs, flat or shaded like lit objects in a photo."""
    size = canvas.shape[0]
    for _ in range(count):
        kind = _choice(rng, ("potato", "bar", "ellipse", "strokes", "soft"))
        if kind == "strokes":
            _draw_strokes(rng, canvas, count=int(rng.integers(1, 4)))
            continue
        cx, cy = rng.uniform(0, size, 2)
        radius = rng.uniform(0.05, 0.4) * size
        if kind in ("potato", "soft"):
            points = _blob(rng, cx, cy, radius)
        else:
            # Elongated (aspect 1.5-10 for an ellipse, 1.8-10 for a bar): never a circle or
            # a square.
            half_width = radius / rng.uniform(1.8 if kind == "bar" else 1.5, 10.0)
            if kind == "bar":
                corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [radius, half_width]
            else:
                t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
                corners = np.stack([radius * np.cos(t), half_width * np.sin(t)], axis=1)
            angle = rng.uniform(0, math.pi)
            turn = np.array(
                [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
            )
            points = corners @ turn.T + [cx, cy]
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).polygon([(float(x), float(y)) for x, y in points], fill=255)
        if kind == "soft":
            mask = mask.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.04, 0.1)) * size))
        weight = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
        paint: np.ndarray = (
            _colorize(_ramp(rng, size), _random_colors(rng, 2))
            if rng.random() < 0.5
            else _random_colors(rng, 1)[0]
        )
        canvas[...] = (1 - weight) * canvas + weight * paint


# Shapes.


def _place_shape(label: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, Box] | None:
    """A shape's pixel mask (H, W) and tight box, at a random scale and place; None if the
    border would cut away more than it may."""
    low, high = SHAPE_EXTENT
    radius = rng.uniform(low, high) * size / 2
    points = _outline(label, rng, radius)
    lowest, highest = points.min(axis=0), points.max(axis=0)
    if rng.random() < CUT_FRACTION:
        center = rng.uniform(0, size, 2)  # anywhere, the border may cut it
    else:
        # The whole shape inside the image, one pixel clear of the border.
        center = np.array(
            [
                rng.uniform(1 - lowest[0], max(1 - lowest[0], size - 1 - highest[0])),
                rng.uniform(1 - lowest[1], max(1 - lowest[1], size - 1 - highest[1])),
            ]
        )
    vertices = points + center
    mask_image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_image)
    if label == "circle":
        draw.ellipse(
            (center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius),
            fill=255,
        )
        area = math.pi * radius**2
    else:
        draw.polygon([(float(x), float(y)) for x, y in vertices], fill=255)
        area = _polygon_area(points)
    mask = np.asarray(mask_image) > 0
    visible = int(mask.sum())
    if visible < MIN_VISIBLE * area or visible == 0:
        return None
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    return mask, box


def _outline(label: str, rng: np.random.Generator, radius: float) -> np.ndarray:
    """Vertices (N, 2) of the shape around the origin (a circle: its four extreme points)."""
    rotation = rng.uniform(0, 2 * math.pi)
    if label == "circle":
        angles = np.array([0, math.pi / 2, math.pi, 3 * math.pi / 2])
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if label == "square":
        # Mostly upright: a square turned by 45° is a diamond, which reads as another shape.
        turn = rng.uniform(-math.pi / 9, math.pi / 9)
        angles = turn + math.pi / 4 + np.arange(4) * math.pi / 2
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if label == "triangle":
        angles = rotation + np.arange(3) * 2 * math.pi / 3
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if label == "star":
        angles = rotation + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    raise ValueError(f"unknown shape {label!r}; known: {', '.join(SHAPE_CLASSES)}")


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _hides(mask: np.ndarray, other: np.ndarray) -> bool:
    """True if ``mask`` drawn over ``other`` covers at most :data:`MAX_COVERED` of it."""
    return bool((mask & other).sum() <= MAX_COVERED * other.sum())


def _samples_under(rng: np.random.Generator, ground: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random sample of up to 32 ground colours under ``mask``, (N, 3)."""
    colors: np.ndarray = ground[mask]
    if len(colors) > 32:
        colors = colors[rng.choice(len(colors), 32, replace=False)]
    return colors


def _fill_for(
    rng: np.random.Generator, under: np.ndarray, *, low_contrast: bool
) -> tuple[int, int, int]:
    """A flat fill that stands out from the colours ``under`` it (CIE76, Lab units).

    Usually by at least :data:`MIN_FILL_CONTRAST` (or as much as 50 tries find on a busy
    texture); with ``low_contrast``, by a small but visible distance in
    :data:`LOW_FILL_CONTRAST` from their mean (a light grey on a slightly darker grey).
    """
    under_lab = srgb_to_lab(under)
    if low_contrast:
        low, high = LOW_FILL_CONTRAST
        target = rng.uniform(low, high)
        mean = under.mean(axis=0)
        mean_lab = srgb_to_lab(mean)
        for _ in range(20):
            direction = rng.normal(size=3)
            direction /= max(1e-9, float(np.linalg.norm(direction)))
            for step in range(1, 60):
                fill = np.clip(np.round(mean + 2.0 * step * direction), 0, 255)
                if np.sqrt(((srgb_to_lab(fill) - mean_lab) ** 2).sum()) >= target:
                    if np.sqrt(((srgb_to_lab(fill) - under_lab) ** 2).sum(axis=-1)).min() >= low:
                        return int(fill[0]), int(fill[1]), int(fill[2])
                    break
    best, best_distance = rng.integers(0, 256, 3), -1.0
    for _ in range(50):
        fill = rng.integers(0, 256, 3)
        distance = float(np.sqrt(((srgb_to_lab(fill) - under_lab) ** 2).sum(axis=-1)).min())
        if distance > best_distance:
            best, best_distance = fill, distance
        if distance >= MIN_FILL_CONTRAST:
            break
    return int(best[0]), int(best[1]), int(best[2])


def _scale_box(box: Box, factor: float) -> Box:
    return box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor


def _iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes in the same units."""
    return _iou(a, b)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: each image depends only on (seed, split, index)."""
    return np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split], index])


def yolo_label_lines(shapes: list[DrawnShape], *, size: int, classes: tuple[str, ...]) -> list[str]:
    """YOLO txt rows ``class x_center y_center width height``, normalized to [0, 1]."""
    lines = []
    for shape in shapes:
        x0, y0, x1, y1 = shape.box
        lines.append(
            f"{classes.index(shape.label)} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
            f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
        )
    return lines


def write_dataset(out_dir: Path, config: DetectorConfig = DEFAULT_CONFIG) -> Path:
    """Write an ultralytics dataset (images/ and labels/ for train and val); return data.yaml.

    A negative (shape-free) image gets an empty label file: ultralytics' "background".
    """
    for split, count in (("train", config.train_images), ("val", config.val_images)):
        images_dir = out_dir / "images" / split
        labels_dir = out_dir / "labels" / split
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, shapes = render_example(
                scene_rng(config.seed, split, index),
                size=config.image_size,
                max_shapes=config.max_shapes,
                classes=config.classes,
                negative_fraction=config.negative_fraction,
            )
            stem = f"{split}-{index:05d}"
            image.save(images_dir / f"{stem}.png")
            rows = yolo_label_lines(shapes, size=config.image_size, classes=config.classes)
            (labels_dir / f"{stem}.txt").write_text("".join(f"{row}\n" for row in rows))
    data_yaml = out_dir / "data.yaml"
    names = "\n".join(f"  {index}: {name}" for index, name in enumerate(config.classes))
    data_yaml.write_text(
        f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data_yaml


# --- training and the cache --------------------------------------------------------------


def prepare_detector(
    out_dir: Path,
    *,
    config: DetectorConfig = DEFAULT_CONFIG,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return ``out_dir/best.pt`` trained for ``config``, training it first unless cached.

    ``out_dir/manifest.json`` records the config key, metrics, class names and the weights'
    sha256; a folder whose manifest names another key is replaced. Training happens in a
    temporary sibling folder that is renamed into place, under a file lock, so concurrent
    callers train once and no reader ever sees a half-written detector.
    """
    out_dir = Path(out_dir)
    report = progress or (lambda message: logger.info("%s", message))
    cached = cached_detector(out_dir, config)
    if cached is not None:
        return cached
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        cached = cached_detector(out_dir, config)  # another process may have finished meanwhile
        if cached is not None:
            return cached
        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
        try:
            staged = _train(work, config, report)
            _publish(staged, out_dir, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    weights = out_dir / WEIGHTS
    report(f"detector ready: {weights}")
    return weights


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a prepared detector folder, or None if there is none readable."""
    try:
        manifest: dict[str, Any] = json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest


def cached_detector(out_dir: Path, config: DetectorConfig = DEFAULT_CONFIG) -> Path | None:
    """The weights in ``out_dir`` if they were prepared for ``config``; None otherwise."""
    manifest = read_manifest(out_dir)
    weights = Path(out_dir) / WEIGHTS
    if manifest is None or manifest.get("config_key") != config.key() or not weights.is_file():
        return None
    return weights


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _publish(staged: Path, out_dir: Path, work: Path) -> None:
    # rename() is atomic but cannot replace a non-empty folder: move a stale one aside first.
    if out_dir.exists():
        os.rename(out_dir, work / "previous")
    os.rename(staged, out_dir)


def _train(work: Path, config: DetectorConfig, report: Callable[[str], None]) -> Path:
    started = time.perf_counter()
    report(f"writing {config.train_images}+{config.val_images} synthetic shape images")
    data_yaml = write_dataset(work / "data", config)
    model_yaml = _write_model_yaml(work, config)

    YOLO = import_ultralytics().YOLO  # heavy: torch and ultralytics load only when training
    from ultralytics.utils import LOGGER

    model = YOLO(str(model_yaml), task="detect")
    parameters = sum(p.numel() for p in model.model.parameters())
    report(
        f"training {parameters / 1e6:.2f} M-parameter YOLO "
        f"for {config.epochs} epochs on {config.device}"
    )

    def on_epoch_end(trainer: Any) -> None:
        if trainer.epoch + 1 > trainer.epochs:
            return  # ultralytics fires this once more for the final validation of best.pt
        map50 = trainer.metrics.get("metrics/mAP50(B)", float("nan"))
        elapsed = time.perf_counter() - started
        report(f"epoch {trainer.epoch + 1}/{trainer.epochs}: mAP50 {map50:.3f} ({elapsed:.0f} s)")

    model.add_callback("on_fit_epoch_end", on_epoch_end)
    previous_level = LOGGER.level
    # Silences ultralytics' per-batch lines and progress bars; the callback reports progress.
    LOGGER.setLevel(logging.WARNING)
    try:
        model.train(
            data=str(data_yaml),
            epochs=config.epochs,
            imgsz=config.image_size,
            batch=config.batch,
            nbs=config.nominal_batch,
            scale=config.scale_augment,
            device=config.device,
            seed=config.seed,
            deterministic=True,
            workers=0,
            project=str(work / "runs"),
            name="train",
            exist_ok=True,
            plots=False,
            verbose=False,
            amp=config.device != "cpu",
            mosaic=config.mosaic,
            cache="ram",  # 600 small images: decode them once, not every epoch
            val=True,
        )
    finally:
        LOGGER.setLevel(previous_level)
    best = work / "runs" / "train" / "weights" / WEIGHTS
    if not best.is_file():
        raise RuntimeError(f"ultralytics finished without writing {best}")
    metrics = _final_metrics(model)
    train_seconds = time.perf_counter() - started
    staged = work / "result"
    staged.mkdir()
    shutil.copy2(best, staged / WEIGHTS)
    _write_manifest(staged, config, metrics, parameters, train_seconds)
    report(
        f"trained in {train_seconds:.0f} s: mAP50 {metrics['map50']:.3f}, "
        f"mAP50-95 {metrics['map50_95']:.3f}"
    )
    return staged


def _write_model_yaml(work: Path, config: DetectorConfig) -> Path:
    import yaml  # PyYAML, an ultralytics dependency

    spec = _bundled_yolov8_spec()
    spec["nc"] = len(config.classes)
    spec["scales"] = {"n": [config.depth_multiple, config.width_multiple, config.max_channels]}
    # ultralytics reads the scale letter from the file name ("yolov8n..."), not from the yaml.
    path = work / "yolov8n-shapes.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _bundled_yolov8_spec() -> dict[str, Any]:
    """ultralytics' bundled yolov8.yaml as a dict, read from the installed package."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ultralytics is not installed; install the featurizer extra")
    package = Path(next(iter(spec.submodule_search_locations)))
    loaded: dict[str, Any] = yaml.safe_load((package / "cfg/models/v8/yolov8.yaml").read_text())
    return loaded


def _final_metrics(model: Any) -> dict[str, float]:
    box = getattr(getattr(model, "metrics", None), "box", None)
    if box is None:
        raise RuntimeError("ultralytics returned no validation metrics")
    return {"map50": float(box.map50), "map50_95": float(box.map)}


def _write_manifest(
    staged: Path,
    config: DetectorConfig,
    metrics: dict[str, float],
    parameters: int,
    train_seconds: float,
) -> None:
    import torch
    import ultralytics

    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "yolo-shapes",
        "config_key": config.key(),
        "config": dataclasses.asdict(config),
        "generator_version": GENERATOR_VERSION,
        "classes": list(config.classes),
        "metrics": metrics,
        "parameters": parameters,
        "train_seconds": round(train_seconds, 1),
        "weights": {"file": WEIGHTS, "sha256": sha256_file(staged / WEIGHTS)},
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# --- CLI ---------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, help="Prepare the synthetic-shapes YOLO detector.")


@cli.command()
def main(
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: $BOIG_HOME/models/yolo-shapes)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = DEFAULT_CONFIG.epochs,
    device: Annotated[str, typer.Option(help="Training device: cpu, cuda, cuda:N.")] = "cpu",
    mosaic: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Mosaic probability.")
    ] = DEFAULT_CONFIG.mosaic,
) -> None:
    """Train (or find cached) the default shapes detector and print where its weights are."""
    config = dataclasses.replace(DEFAULT_CONFIG, epochs=epochs, device=device, mosaic=mosaic)
    weights = prepare_detector(out or default_detector_dir(), config=config, progress=typer.echo)
    manifest = read_manifest(weights.parent) or {}
    typer.echo(json.dumps({"weights": str(weights), "metrics": manifest.get("metrics")}))


if __name__ == "__main__":
    cli()
