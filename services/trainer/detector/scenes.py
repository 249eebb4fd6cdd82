"""The synthetic shape world the featurizer's default detector is trained on (design §7).

Seeded images of filled circles, squares, triangles and stars (from icons to most of the
image, some faint, some cut by the border, on flat, gradient and textured grounds among
non-shape distractors) and of shape-free textures that teach the detector "background".
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from services.common.colour import srgb_to_lab
from services.common.geometry import Box, box_iou
from services.common.shapes import SHAPE_CLASSES, SQUARE_MAX_TURN, shape_polygon

GENERATOR_VERSION = 2
"""Bump when the images change for the same seed: it is part of the cache key."""
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


@dataclass(frozen=True)
class DrawnShape:
    """A shape in a generated image: its class and tight pixel box ``(x0, y0, x1, y1)``."""

    label: str
    box: Box


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
            if all(box_iou(box, other.box) <= MAX_BOX_IOU for other in shapes) and all(
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
        # Mostly upright (drawn after the rotation, which it replaces: seeds keep their images).
        rotation = rng.uniform(-SQUARE_MAX_TURN, SQUARE_MAX_TURN)
    return shape_polygon(label, radius, rotation)


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


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: each image depends only on (seed, split, index)."""
    return np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split], index])
