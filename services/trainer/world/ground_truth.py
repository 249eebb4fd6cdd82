"""The hidden KPI function of the synthetic world. Evaluation code only (design §6).

Training code must never import this module, directly or through another module (a unit test
follows every import under ``services/`` outside ``trainer/world`` and ``trainer/evaluate`` to
check): a model that saw it could score perfectly without learning anything from the data.
The brands' tastes it reads are hidden too, in :mod:`.tastes`.

For a post of ``brand`` at time ``t`` (UTC) whose creative has attributes ``a``::

    log_mean(a, t) = taste(a, brand, t) + time(brand, t)
    λ = brand.audience × brand.base_rate × exp(log_mean + ε),   ε ~ Normal(0, σ_brand)
    likes ~ Poisson(λ)

so ``E[likes] = audience × base_rate × exp(log_mean + σ²/2)`` (:func:`expected_kpi`), where

- ``taste = palette + tones + objects + text``:
  palette = ``palette_weight × Σ coverage_i × exp(-(ΔE76_i / PALETTE_SIGMA)²)``, ΔE76 from
  each drawn colour to the nearest preferred one, the preference moving from ``palette`` to
  ``late_palette`` over ``palette_shift_years`` (the score is the linear mix of the two);
  tones = ``Σ_axis preference_axis(t) × axis_value(a)`` (:func:`tone_axes`);
  objects = sum of ``object_effects`` over the distinct classes present;
  text = ``text_effect`` if the creative carries overlay text;
- ``time = hour + weekday + growth``: ``hour_effect × cos(2π(hour − peak_hour)/24)``, the
  weekday's effect, and ``(PLATFORM_GROWTH_PER_YEAR + audience_growth_per_year) ×
  (t − REFERENCE_YEAR)`` with ``t`` in fractional years.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from services.common.colour import srgb_to_lab
from services.trainer.world.brands import REFERENCE_YEAR, RGB, Brand
from services.trainer.world.render import CreativeAttributes
from services.trainer.world.tastes import TonePreference, taste_of

PALETTE_SIGMA = 25.0
"""ΔE76 (Lab units) at which a colour's match to a preferred colour falls to 1/e: colours
within ~10 units count almost fully, colours 50 units away hardly at all."""
PLATFORM_GROWTH_PER_YEAR = 0.1
"""Log-KPI growth per year of every account (the platform's user base grows), so raw KPIs
of different years are not comparable: a temporal split must normalize per year."""

# Where each tone axis reads -1 and +1, in the units of ``ToneStats`` (Lab). Chosen around
# the featurizer's tone-word thresholds, so a "dark" image is near -1 on lightness.
LIGHTNESS_RANGE = (25.0, 75.0)
CONTRAST_RANGE = (6.0, 32.0)
CHROMA_RANGE = (8.0, 50.0)


@dataclass(frozen=True)
class LogKpiBreakdown:
    """Each additive term of a post's mean log-KPI (before noise), for reports and tests."""

    palette: float
    tones: float
    objects: float
    text: float
    hour: float
    weekday: float
    growth: float

    @property
    def taste(self) -> float:
        return self.palette + self.tones + self.objects + self.text

    @property
    def time(self) -> float:
        return self.hour + self.weekday + self.growth

    @property
    def total(self) -> float:
        return self.taste + self.time


def fractional_year(posted_at: datetime) -> float:
    """2021-07-02T12:00Z → ~2021.5 (UTC; a naive datetime is taken as UTC)."""
    moment = posted_at.replace(tzinfo=UTC) if posted_at.tzinfo is None else posted_at
    moment = moment.astimezone(UTC)
    start = datetime(moment.year, 1, 1, tzinfo=UTC)
    end = datetime(moment.year + 1, 1, 1, tzinfo=UTC)
    return moment.year + (moment - start) / (end - start)


def palette_shift(brand: Brand, year: float) -> float:
    """How far the brand's colour preference has moved to its late palette at ``year``: 0–1."""
    first, last = taste_of(brand).palette_shift_years
    if last <= first:
        return 1.0 if year >= last else 0.0
    return min(1.0, max(0.0, (year - first) / (last - first)))


def tone_preference(brand: Brand, year: float) -> TonePreference:
    """The brand's tone preference at ``year``, after drift (each axis clipped to ±1)."""
    taste = taste_of(brand)
    base, drift = taste.tones, taste.tone_drift_per_year
    years = year - REFERENCE_YEAR

    def drifted(start: float, per_year: float) -> float:
        return min(1.0, max(-1.0, start + per_year * years))

    return TonePreference(
        lightness=drifted(base.lightness, drift.lightness),
        saturation=drifted(base.saturation, drift.saturation),
        warmth=drifted(base.warmth, drift.warmth),
        contrast=drifted(base.contrast, drift.contrast),
    )


def tone_axes(attributes: CreativeAttributes) -> TonePreference:
    """The creative's position on each tone axis in [-1, 1] (same fields as a preference)."""
    stats = attributes.tones
    return TonePreference(
        lightness=_scale(stats.mean_lightness, LIGHTNESS_RANGE),
        saturation=_scale(stats.mean_chroma, CHROMA_RANGE),
        warmth=min(1.0, max(-1.0, stats.warmth)),
        contrast=_scale(stats.lightness_std, CONTRAST_RANGE),
    )


def palette_match(attributes: CreativeAttributes, preferred: tuple[RGB, ...]) -> float:
    """Coverage-weighted closeness of the creative's colours to ``preferred``, in [0, 1]."""
    if not preferred or not attributes.palette:
        return 0.0
    drawn = srgb_to_lab([entry.rgb for entry in attributes.palette])
    liked = srgb_to_lab(list(preferred))
    distance = np.linalg.norm(drawn[:, None, :] - liked[None, :, :], axis=-1).min(axis=1)
    coverage = np.array([entry.coverage for entry in attributes.palette])
    return float((coverage * np.exp(-((distance / PALETTE_SIGMA) ** 2))).sum())


def log_kpi_breakdown(
    attributes: CreativeAttributes, brand: Brand, posted_at: datetime
) -> LogKpiBreakdown:
    """Every term of the mean log-KPI (relative to ``brand.kpi_scale``) of a post."""
    taste = taste_of(brand)
    year = fractional_year(posted_at)
    shift = palette_shift(brand, year)
    palette = taste.palette_weight * (
        (1 - shift) * palette_match(attributes, taste.palette)
        + shift * palette_match(attributes, taste.late_palette)
    )
    preference, axes = tone_preference(brand, year), tone_axes(attributes)
    tones = (
        preference.lightness * axes.lightness
        + preference.saturation * axes.saturation
        + preference.warmth * axes.warmth
        + preference.contrast * axes.contrast
    )
    classes = {obj.label for obj in attributes.objects}
    objects = sum(taste.object_effects.get(label, 0.0) for label in sorted(classes))
    text = taste.text_effect if attributes.text else 0.0
    moment = posted_at.replace(tzinfo=UTC) if posted_at.tzinfo is None else posted_at
    moment = moment.astimezone(UTC)
    hour_of_day = moment.hour + moment.minute / 60
    hour = taste.hour_effect * math.cos(2 * math.pi * (hour_of_day - taste.peak_hour) / 24)
    weekday = taste.weekday_effects[moment.weekday()]
    growth = (PLATFORM_GROWTH_PER_YEAR + taste.audience_growth_per_year) * (year - REFERENCE_YEAR)
    return LogKpiBreakdown(
        palette=palette,
        tones=tones,
        objects=objects,
        text=text,
        hour=hour,
        weekday=weekday,
        growth=growth,
    )


def expected_log_kpi(attributes: CreativeAttributes, brand: Brand, posted_at: datetime) -> float:
    """Mean of ``log λ``: ``log(kpi_scale)`` plus every taste and time term (no noise)."""
    return math.log(brand.kpi_scale) + log_kpi_breakdown(attributes, brand, posted_at).total


def expected_kpi(attributes: CreativeAttributes, brand: Brand, posted_at: datetime) -> float:
    """Expected KPI of a post: ``exp(expected_log_kpi + σ²/2)`` (log-normal mean)."""
    sigma = taste_of(brand).noise_sigma
    return math.exp(expected_log_kpi(attributes, brand, posted_at) + sigma**2 / 2)


def draw_kpi(
    rng: np.random.Generator, attributes: CreativeAttributes, brand: Brand, posted_at: datetime
) -> int:
    """One observed KPI: Poisson counts around a log-normally noisy rate."""
    log_rate = expected_log_kpi(attributes, brand, posted_at)
    noise = float(rng.normal(0.0, taste_of(brand).noise_sigma))
    return int(rng.poisson(math.exp(log_rate + noise)))


def _scale(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return min(1.0, max(-1.0, 2 * (value - low) / (high - low) - 1))
