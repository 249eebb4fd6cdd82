"""Tone words of an image from pixel statistics in CIE-Lab, at most one word per axis.

Statistics are pixel-weighted over the analysed sample (see ``colors.sample_colors``):

- lightness: mean L* (0–100). Under ``DARK_MAX_LIGHTNESS`` (35) is *dark*; over
  ``BRIGHT_MIN_LIGHTNESS`` (68) is *bright*; in between says nothing.
- contrast: standard deviation of L*. Over ``HIGH_CONTRAST_MIN_STD`` (26) is *high-contrast*;
  under ``LOW_CONTRAST_MAX_STD`` (12) is *low-contrast*. A flat image (std 0) is low-contrast.
- saturation: mean chroma C*ab = hypot(a*, b*). Over ``SATURATED_MIN_CHROMA`` (40) is
  *saturated*; under ``MUTED_MAX_CHROMA`` (18) is *muted*.
- warmth: each pixel's hue votes +1 (red, orange, yellow: warm) or -1 (green, cyan, blue:
  cool), interpolated linearly across the borders (see ``WARMTH_BY_HUE``), weighted by its
  chroma so that grey pixels do not vote. The weighted mean is in [-1, 1]: at least
  ``WARMTH_MIN_SCORE`` (0.3) is *warm*, at most -0.3 is *cool*. An image whose mean chroma is
  under ``NEUTRAL_MAX_CHROMA`` (8; nearly achromatic) or whose score is in between is *neutral*.

The thresholds were set on drawn images of known colours and on skimage's sample photos
(coffee: warm; astronaut: high-contrast; a grey image: neutral, muted) — see the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.contracts import Tone
from services.featurizer.colors import ColorSample

DARK_MAX_LIGHTNESS = 35.0
BRIGHT_MIN_LIGHTNESS = 68.0
HIGH_CONTRAST_MIN_STD = 26.0
LOW_CONTRAST_MAX_STD = 12.0
SATURATED_MIN_CHROMA = 40.0
MUTED_MAX_CHROMA = 18.0
NEUTRAL_MAX_CHROMA = 8.0
WARMTH_MIN_SCORE = 0.3

WARMTH_BY_HUE: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.0, 100.0, 115.0, 130.0, 310.0, 328.0, 345.0, 360.0),
    (1.0, 1.0, 0.0, -1.0, -1.0, 0.0, 1.0, 1.0),
)
"""Knots (Lab hue angle in degrees, vote). Pink sits near 8°, red 40°, orange 64°, yellow
103°, green 136°, cyan 196°, blue 306°, magenta 328°: warm from pink to yellow, cool from
green through blue to indigo, magenta/purple undecided."""
ACHROMATIC_CHROMA = 1.0
"""Chroma under one Lab unit is rounding noise of a grey pixel: it casts no hue vote."""


@dataclass(frozen=True)
class ToneStats:
    """The measurements tone words are read from (pixel-weighted, Lab units)."""

    mean_lightness: float
    lightness_std: float
    mean_chroma: float
    warmth: float
    """Chroma-weighted hue vote in [-1, 1]: +1 all warm hues, -1 all cool hues."""


@dataclass(frozen=True)
class ToneAnalysis:
    tones: list[Tone]
    stats: ToneStats


def measure_tones(sample: ColorSample) -> ToneStats:
    """Lightness, contrast, chroma and warmth statistics of the sampled pixels."""
    weights = sample.counts.astype(np.float64)
    total = weights.sum()
    lightness, a, b = sample.lab[:, 0], sample.lab[:, 1], sample.lab[:, 2]
    mean_lightness = float(weights @ lightness / total)
    lightness_std = float(np.sqrt(weights @ (lightness - mean_lightness) ** 2 / total))
    chroma = np.hypot(a, b)
    chroma = np.where(chroma < ACHROMATIC_CHROMA, 0.0, chroma)
    mean_chroma = float(weights @ chroma / total)
    hue = np.degrees(np.arctan2(b, a)) % 360
    votes = np.interp(hue, *WARMTH_BY_HUE)
    chroma_mass = weights * chroma
    warmth = float(chroma_mass @ votes / chroma_mass.sum()) if chroma_mass.sum() > 0 else 0.0
    return ToneStats(
        mean_lightness=mean_lightness,
        lightness_std=lightness_std,
        mean_chroma=mean_chroma,
        warmth=warmth,
    )


def tone_words(stats: ToneStats) -> list[Tone]:
    """The tone words the statistics support (contract order, at most one per axis)."""
    tones: list[Tone] = []
    if stats.mean_chroma < NEUTRAL_MAX_CHROMA:
        tones.append(Tone.NEUTRAL)
    elif stats.warmth >= WARMTH_MIN_SCORE:
        tones.append(Tone.WARM)
    elif stats.warmth <= -WARMTH_MIN_SCORE:
        tones.append(Tone.COOL)
    else:
        tones.append(Tone.NEUTRAL)
    if stats.mean_lightness < DARK_MAX_LIGHTNESS:
        tones.append(Tone.DARK)
    elif stats.mean_lightness > BRIGHT_MIN_LIGHTNESS:
        tones.append(Tone.BRIGHT)
    if stats.lightness_std > HIGH_CONTRAST_MIN_STD:
        tones.append(Tone.HIGH_CONTRAST)
    elif stats.lightness_std < LOW_CONTRAST_MAX_STD:
        tones.append(Tone.LOW_CONTRAST)
    if stats.mean_chroma > SATURATED_MIN_CHROMA:
        tones.append(Tone.SATURATED)
    elif stats.mean_chroma < MUTED_MAX_CHROMA:
        tones.append(Tone.MUTED)
    return tones


def analyze_tones(sample: ColorSample) -> ToneAnalysis:
    stats = measure_tones(sample)
    return ToneAnalysis(tones=tone_words(stats), stats=stats)
