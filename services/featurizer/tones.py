"""Tone words of an image from pixel statistics in CIE-Lab, at most one word per axis.

Statistics are pixel-weighted over the analysed sample (see ``colors.sample_colors``):

- lightness: mean L* (0–100). Under ``DARK_MAX_LIGHTNESS`` (35) is *dark*; over
  ``BRIGHT_MIN_LIGHTNESS`` (68) is *bright*; in between says nothing.
- contrast: standard deviation of L*. Over ``HIGH_CONTRAST_MIN_STD`` (26) is *high-contrast*;
  under ``LOW_CONTRAST_MAX_STD`` (12) is *low-contrast*. A flat image (std 0) is low-contrast.
- saturation: mean chroma C*ab = hypot(a*, b*). Over ``SATURATED_MIN_CHROMA`` (40) is
  *saturated*; under ``MUTED_MAX_CHROMA`` (18) is *muted*.
- warmth: each pixel's hue votes +1 (red, orange, yellow: warm) or -1 (green, cyan, blue:
  cool), interpolated linearly across the borders (see ``common.colour.WARMTH_BY_HUE``),
  weighted by its chroma so that grey pixels (chroma under ``common.colour.ACHROMATIC_CHROMA``)
  do not vote. The weighted mean is in [-1, 1]: at least ``WARMTH_MIN_SCORE`` (0.3) is
  *warm*, at most -0.3 is *cool*. An image whose mean chroma is under ``NEUTRAL_MAX_CHROMA``
  (8; nearly achromatic) or whose score is in between is *neutral*.

The thresholds were set on drawn images of known colours and on skimage's sample photos
(coffee: warm; astronaut: high-contrast; a grey image: neutral, muted) — see the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.colour import ToneStats, tone_stats_from_lab
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


@dataclass(frozen=True)
class ToneAnalysis:
    tones: list[Tone]
    stats: ToneStats


def measure_tones(sample: ColorSample) -> ToneStats:
    """Lightness, contrast, chroma and warmth statistics of the sampled pixels."""
    return tone_stats_from_lab(sample.lab, sample.counts)


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
