"""Generate a synthetic world on disk: BoigBench-shaped posts, creatives and KPIs from a seed.

``out_dir/posts.jsonl`` holds one row per post (``id, account, posted_at, text, keywords,
media, kpi_name, kpi_value``), ``out_dir/media/`` the PNG creatives and ``out_dir/world.json``
how it was made (never the hidden tastes). The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from services.common.colour import srgb_to_lab
from services.common.geometry import Box, box_iou
from services.common.shapes import SHAPE_CLASSES, SQUARE_MAX_TURN
from services.trainer.world.brands import DEFAULT_BRANDS, RGB, Brand
from services.trainer.world.ground_truth import (
    draw_kpi,
    expected_kpi,
    fractional_year,
    log_kpi_breakdown,
    palette_shift,
)
from services.trainer.world.render import (
    CreativeAttributes,
    CreativeSpec,
    ShapeSpec,
    render_creative,
)
from services.trainer.world.tastes import taste_of

GENERATOR = "boig-synthetic-world"
GENERATOR_VERSION = 3
"""Bump whenever the same seed would give different files. 2: off-taste colours come mostly
from the brand's house palette instead of uniformly at random. 3: a creative follows one
scheme as a whole (the taste or the house style) instead of a coin flip per colour and shape."""
POSTS_FILE = "posts.jsonl"
WORLD_FILE = "world.json"
TRUTH_FILE = "truth.jsonl"
MEDIA_DIR = "media"

Variant = Literal["social", "stock"]
KPI_NAMES: dict[str, str] = {"social": "likes", "stock": "downloads"}

SHAPE_COUNT_WEIGHTS = (0.15, 0.35, 0.3, 0.2)
"""Probability of 0, 1, 2 and 3 shapes on a creative."""
SHAPE_RADIUS = (0.08, 0.28)
"""Circumradius range as a fraction of the side: icons up to shapes filling half the image."""
MAX_BOX_IOU = 0.1
"""Shapes may touch but barely overlap, so each stays recognisable (and detectable)."""
MIN_FILL_CONTRAST = 20.0
"""Least ΔE76 between a shape's fill and each background colour: no invisible shapes."""
COLOR_JITTER = 8.0
"""Standard deviation (per sRGB channel) of a designer's deviation from a palette colour."""
STRAY_COLOR_SHARE = 0.1
"""Share of a creative's colours that are any colour at all instead of one of its scheme's:
designers improvise a little, and a model must not take a palette as a closed list."""
HABIT_HOUR_SHARE = 0.75
"""Share of posts that go out at one of the brand's habitual hours; the rest at any hour."""
VOLUME_GROWTH = 1.5
"""Posting volume grows over the span: the share of posts before fraction ``t`` of it is
``t ** VOLUME_GROWTH``, so over five years the last holds about three times the first's posts."""


class BrandSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    account: str
    posts: int


class WorldManifest(BaseModel):
    """``world.json``: how a world was generated. Holds no hidden taste."""

    model_config = ConfigDict(frozen=True)

    generator: str = GENERATOR
    generator_version: int = GENERATOR_VERSION
    seed: int
    variant: Variant
    kpi_name: str
    start_year: int
    years: int
    image_size: int
    posts: int
    brands: list[BrandSummary]
    posts_file: str = POSTS_FILE
    media_dir: str = MEDIA_DIR


def generate_world(
    out_dir: Path,
    *,
    seed: int,
    brands: Sequence[Brand] = DEFAULT_BRANDS,
    posts_per_brand: int,
    start_year: int = 2018,
    years: int = 5,
    variant: Variant = "social",
    image_size: int = 256,
    truth_dir: Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> WorldManifest:
    """Write a world of ``posts_per_brand`` posts per brand over ``years`` from ``start_year``.

    ``truth_dir``, if given, receives ``truth.jsonl``: every post's drawn attributes,
    expected KPI and its breakdown, for evaluation code; keep it away from training data.
    ``progress`` is called with 1 after each post.
    """
    if posts_per_brand < 1 or years < 1 or image_size < 32:
        raise ValueError("posts_per_brand and years must be ≥ 1 and image_size ≥ 32")
    if not brands or len({brand.account for brand in brands}) != len(brands):
        raise ValueError("brands must be non-empty with distinct accounts")
    if variant not in KPI_NAMES:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(KPI_NAMES)}")
    out_dir = Path(out_dir)
    media = out_dir / MEDIA_DIR
    if (out_dir / POSTS_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir / POSTS_FILE} exists; pass overwrite=True")
        # Stale creatives of a bigger earlier world would otherwise linger beside the new one.
        shutil.rmtree(media, ignore_errors=True)
    media.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, object]] = []
    truths: list[dict[str, object]] = []
    for brand in brands:
        brand_key = zlib.crc32(brand.account.encode())  # stable: adding a brand moves no other
        times = sample_post_times(
            np.random.default_rng([seed, brand_key, 0]),
            brand,
            count=posts_per_brand,
            start_year=start_year,
            years=years,
        )
        for index, posted_at in enumerate(times):
            # One generator per post: a post's creative and KPI do not depend on how many
            # random draws earlier posts took, so changing one sampler leaves others intact.
            rng = np.random.default_rng([seed, brand_key, 1, index])
            post_id = f"{brand.account}-{index:05d}"
            row, truth = _make_post(
                rng, brand, post_id, posted_at, out_dir, variant=variant, image_size=image_size
            )
            rows.append(row)
            truths.append(truth)
            if progress is not None:
                progress(1)

    order = sorted(range(len(rows)), key=lambda i: (str(rows[i]["posted_at"]), str(rows[i]["id"])))
    _write_jsonl(out_dir / POSTS_FILE, [rows[i] for i in order])
    if truth_dir is not None:
        Path(truth_dir).mkdir(parents=True, exist_ok=True)
        _write_jsonl(Path(truth_dir) / TRUTH_FILE, [truths[i] for i in order])
    manifest = WorldManifest(
        seed=seed,
        variant=variant,
        kpi_name=KPI_NAMES[variant],
        start_year=start_year,
        years=years,
        image_size=image_size,
        posts=len(rows),
        brands=[
            BrandSummary(name=brand.name, account=brand.account, posts=posts_per_brand)
            for brand in brands
        ],
    )
    (out_dir / WORLD_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def sample_post_times(
    rng: np.random.Generator, brand: Brand, *, count: int, start_year: int, years: int
) -> list[datetime]:
    """``count`` UTC post times in ``[start_year, start_year + years)``, sorted.

    Uneven on purpose: volume grows over the span, weekdays follow the brand's habits, and
    most posts go out at the brand's habitual hours.
    """
    start = datetime(start_year, 1, 1, tzinfo=UTC)
    days = (datetime(start_year + years, 1, 1, tzinfo=UTC) - start).days
    weekday_weights = np.array(brand.habits.weekday_weights, dtype=np.float64)
    accept = weekday_weights / weekday_weights.max()
    times: list[datetime] = []
    while len(times) < count:
        day = int(rng.random() ** (1 / VOLUME_GROWTH) * days)
        date = start + timedelta(days=day)
        if rng.random() >= accept[date.weekday()]:
            continue  # rejection sampling on the brand's weekday habits
        if rng.random() < HABIT_HOUR_SHARE:
            hour = int(rng.choice(brand.habits.hours))
        else:
            hour = int(rng.integers(24))
        times.append(date + timedelta(hours=hour, minutes=int(rng.integers(60))))
    return sorted(times)


def sample_creative_spec(
    rng: np.random.Generator, brand: Brand, year: float, *, text: str | None = None
) -> CreativeSpec:
    """A creative as the brand's designers would draw it at ``year``.

    A creative follows one scheme as a whole: with probability ``habits.taste_share`` the
    audience's taste (its palette in fashion at the time, its liked shapes), otherwise the
    brand's house style (house palette and shapes). Designers work in schemes, so a post's
    look is coherent, and a world holds both on-taste and off-taste creatives: the contrast a
    KPI model learns from, and a look that differs by KPI level in place, not only in spread
    (v2's coin flip per colour made every creative a mix, so knowing the level told little
    about the look). A few colours stray from the scheme (``STRAY_COLOR_SHARE``).
    """
    taste, habits = taste_of(brand), brand.habits
    follows_taste = rng.random() < habits.taste_share
    if follows_taste:
        in_fashion = rng.random() < palette_shift(brand, year)
        scheme = taste.late_palette if in_fashion else taste.palette
        liked = [(label, effect) for label, effect in taste.object_effects.items() if effect > 0]
        labels = tuple(label for label, _ in liked)
        label_weights = np.array([effect for _, effect in liked], dtype=np.float64)
    else:
        scheme = habits.house_palette
        labels = habits.house_shapes
        label_weights = np.ones(len(labels), dtype=np.float64)

    def color() -> RGB:
        if rng.random() < STRAY_COLOR_SHARE:
            drawn = rng.integers(0, 256, 3)
            return (int(drawn[0]), int(drawn[1]), int(drawn[2]))
        base = np.array(scheme[int(rng.integers(len(scheme)))], dtype=np.float64)
        jittered = np.clip(np.round(base + rng.normal(0.0, COLOR_JITTER, 3)), 0, 255)
        return (int(jittered[0]), int(jittered[1]), int(jittered[2]))

    def shape_label() -> str:
        if not labels:  # a scheme with no shapes of its own: any class
            return SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        return labels[int(rng.choice(len(labels), p=label_weights / label_weights.sum()))]

    background = (color(),) if rng.random() < 0.5 else (color(), color())
    angle = float(rng.uniform(0, 2 * math.pi))
    ground = srgb_to_lab(list(background))
    shapes: list[ShapeSpec] = []
    for _ in range(int(rng.choice(len(SHAPE_COUNT_WEIGHTS), p=SHAPE_COUNT_WEIGHTS))):
        label = shape_label()
        fill = color()
        for _attempt in range(10):
            if np.linalg.norm(srgb_to_lab(fill) - ground, axis=-1).min() >= MIN_FILL_CONTRAST:
                break
            fill = color()
        else:
            continue  # nothing stands out from this ground: one shape fewer
        placed = _place(rng, label, [(s.center, s.radius) for s in shapes])
        if placed is None:
            continue
        center, radius, rotation = placed
        shapes.append(
            ShapeSpec(label=label, rgb=fill, center=center, radius=radius, rotation=rotation)
        )
    mean_lightness = float(ground[:, 0].mean())
    # Text the reader can read: white on dark grounds, near-black on light ones.
    text_rgb: RGB = (255, 255, 255) if mean_lightness < 55 else (20, 20, 20)
    text_top = (
        float(rng.uniform(0.04, 0.1)) if rng.random() < 0.5 else float(rng.uniform(0.8, 0.86))
    )
    return CreativeSpec(
        background=background,
        gradient_angle=angle,
        shapes=tuple(shapes),
        text=text,
        text_rgb=text_rgb,
        text_top=text_top,
    )


def post_text(rng: np.random.Generator, brand: Brand, *, variant: Variant) -> tuple[str, list[str]]:
    """A post's text (a title for the stock variant) and 2–4 keywords from the brand's voice."""
    voice = brand.voice
    product = voice.products[int(rng.integers(len(voice.products)))]
    count = int(rng.integers(2, 5))
    picks = rng.choice(len(voice.keywords), size=min(count, len(voice.keywords)), replace=False)
    keywords = [voice.keywords[int(i)] for i in picks]
    if variant == "stock":
        return f"{product[0].upper()}{product[1:]}, {' and '.join(keywords[:2])}", keywords
    opener = voice.openers[int(rng.integers(len(voice.openers)))]
    closer = voice.closers[int(rng.integers(len(voice.closers)))]
    return f"{opener} {product}. {closer}", keywords


def attributes_record(attributes: CreativeAttributes) -> dict[str, object]:
    """The attribute record as plain JSON-ready data."""
    return asdict(attributes)


def _make_post(
    rng: np.random.Generator,
    brand: Brand,
    post_id: str,
    posted_at: datetime,
    out_dir: Path,
    *,
    variant: Variant,
    image_size: int,
) -> tuple[dict[str, object], dict[str, object]]:
    text, keywords = post_text(rng, brand, variant=variant)
    overlay = None
    if rng.random() < brand.habits.text_overlay_rate:
        overlay = brand.voice.overlay_texts[int(rng.integers(len(brand.voice.overlay_texts)))]
    spec = sample_creative_spec(rng, brand, fractional_year(posted_at), text=overlay)
    image, attributes = render_creative(spec, size=image_size)
    media = f"{MEDIA_DIR}/{post_id}.png"
    image.save(out_dir / media, format="PNG", optimize=False)
    kpi = draw_kpi(rng, attributes, brand, posted_at)
    row: dict[str, object] = {
        "id": post_id,
        "account": brand.account,
        "posted_at": posted_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "text": text,
        "keywords": keywords,
        "media": media,
        "kpi_name": KPI_NAMES[variant],
        "kpi_value": kpi,
    }
    truth: dict[str, object] = {
        "id": post_id,
        "account": brand.account,
        "expected_kpi": expected_kpi(attributes, brand, posted_at),
        "breakdown": asdict(log_kpi_breakdown(attributes, brand, posted_at)),
        "attributes": attributes_record(attributes),
    }
    return row, truth


def _place(
    rng: np.random.Generator,
    label: str,
    others: list[tuple[tuple[float, float], float]],
) -> tuple[tuple[float, float], float, float] | None:
    """Centre, radius and rotation of a shape inside the image that barely overlaps others."""
    for _attempt in range(20):
        radius = float(rng.uniform(*SHAPE_RADIUS))
        center = (float(rng.uniform(radius, 1 - radius)), float(rng.uniform(radius, 1 - radius)))
        if all(
            box_iou(_enclosing_box(center, radius), _enclosing_box(c, r)) <= MAX_BOX_IOU
            for c, r in others
        ):
            limit = SQUARE_MAX_TURN if label == "square" else math.pi
            return center, radius, float(rng.uniform(-limit, limit))
    return None


def _enclosing_box(center: tuple[float, float], radius: float) -> Box:
    """The square circumscribing a shape: its box at any rotation, at most."""
    return center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius


def _write_jsonl(path: Path, rows: Sequence[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
