"""Tone words: measured statistics, the documented thresholds, and photos that read right."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from services.common.colour import ToneStats
from services.common.contracts import Tone, Verbalization
from services.featurizer.colors import sample_colors
from services.featurizer.tones import (
    BRIGHT_MIN_LIGHTNESS,
    DARK_MAX_LIGHTNESS,
    HIGH_CONTRAST_MIN_STD,
    LOW_CONTRAST_MAX_STD,
    MUTED_MAX_CHROMA,
    NEUTRAL_MAX_CHROMA,
    SATURATED_MIN_CHROMA,
    WARMTH_MIN_SCORE,
    analyze_tones,
    measure_tones,
    tone_words,
)


def flat(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def halves(left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    image = flat(left, (100, 50))
    image.paste(right, (50, 0, 100, 50))
    return image


def tones_of(image: Image.Image) -> set[Tone]:
    return set(analyze_tones(sample_colors(image)).tones)


def test_flat_grey_is_neutral_low_contrast_muted_with_zero_statistics() -> None:
    analysis = analyze_tones(sample_colors(flat((128, 128, 128))))
    assert set(analysis.tones) == {Tone.NEUTRAL, Tone.LOW_CONTRAST, Tone.MUTED}
    assert analysis.stats.lightness_std == 0.0
    assert analysis.stats.mean_chroma == pytest.approx(0.0, abs=1e-6)
    assert analysis.stats.warmth == 0.0
    assert analysis.stats.mean_lightness == pytest.approx(53.59, abs=0.01)


def test_black_is_dark_and_white_is_bright() -> None:
    assert Tone.DARK in tones_of(flat((0, 0, 0)))
    assert Tone.BRIGHT in tones_of(flat((255, 255, 255)))
    middle = tones_of(flat((128, 128, 128)))
    assert Tone.DARK not in middle and Tone.BRIGHT not in middle


def test_black_and_white_halves_are_high_contrast_with_std_fifty() -> None:
    stats = measure_tones(sample_colors(halves((0, 0, 0), (255, 255, 255))))
    assert stats.mean_lightness == pytest.approx(50.0, abs=1e-3)
    assert stats.lightness_std == pytest.approx(50.0, abs=1e-3)
    assert Tone.HIGH_CONTRAST in tone_words(stats)


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((255, 0, 0), {Tone.WARM, Tone.SATURATED}),
        ((255, 140, 0), {Tone.WARM, Tone.SATURATED, Tone.BRIGHT}),
        ((255, 255, 0), {Tone.WARM, Tone.SATURATED, Tone.BRIGHT}),
        ((0, 0, 255), {Tone.COOL, Tone.SATURATED, Tone.DARK}),
        ((0, 160, 0), {Tone.COOL, Tone.SATURATED}),
        ((0, 200, 220), {Tone.COOL, Tone.SATURATED, Tone.BRIGHT}),
        ((180, 170, 160), {Tone.NEUTRAL, Tone.MUTED, Tone.BRIGHT}),
    ],
)
def test_flat_colours_get_their_warmth_and_saturation(
    rgb: tuple[int, int, int], expected: set[Tone]
) -> None:
    assert tones_of(flat(rgb)) - {Tone.LOW_CONTRAST} == expected


def test_warm_and_cool_halves_of_similar_chroma_cancel_to_neutral() -> None:
    # Orange (C* 84) against royal blue (C* 70); votes are chroma-weighted.
    stats = measure_tones(sample_colors(halves((255, 140, 0), (65, 105, 225))))
    assert abs(stats.warmth) < WARMTH_MIN_SCORE
    assert Tone.NEUTRAL in tone_words(stats)


def test_thresholds_pick_one_word_per_axis_at_their_documented_values() -> None:
    middle = ToneStats(mean_lightness=50.0, lightness_std=18.0, mean_chroma=30.0, warmth=0.0)
    assert tone_words(middle) == [Tone.NEUTRAL]
    cases = {
        "mean_lightness": [
            (DARK_MAX_LIGHTNESS - 0.1, Tone.DARK),
            (BRIGHT_MIN_LIGHTNESS + 0.1, Tone.BRIGHT),
        ],
        "lightness_std": [
            (HIGH_CONTRAST_MIN_STD + 0.1, Tone.HIGH_CONTRAST),
            (LOW_CONTRAST_MAX_STD - 0.1, Tone.LOW_CONTRAST),
        ],
        "mean_chroma": [
            (SATURATED_MIN_CHROMA + 0.1, Tone.SATURATED),
            (MUTED_MAX_CHROMA - 0.1, Tone.MUTED),
        ],
        "warmth": [(WARMTH_MIN_SCORE, Tone.WARM), (-WARMTH_MIN_SCORE, Tone.COOL)],
    }
    for field, values in cases.items():
        for value, tone in values:
            stats = ToneStats(**{**middle.__dict__, field: value})
            words = tone_words(stats)
            assert tone in words, (field, value, words)
            Verbalization(tones=words)  # at most one word per axis
    # Nearly achromatic: neutral whatever the hue says.
    grey_ish = ToneStats(
        mean_lightness=50.0, lightness_std=18.0, mean_chroma=NEUTRAL_MAX_CHROMA - 0.1, warmth=1.0
    )
    assert Tone.NEUTRAL in tone_words(grey_ish)


def test_coffee_is_warm_and_saturated() -> None:
    analysis = analyze_tones(sample_colors(Image.fromarray(data.coffee())))
    assert Tone.WARM in analysis.tones
    assert Tone.SATURATED in analysis.tones
    assert analysis.stats.warmth > 0.8


def test_astronaut_is_high_contrast_and_the_night_sky_is_dark() -> None:
    assert Tone.HIGH_CONTRAST in tones_of(Image.fromarray(data.astronaut()))
    sky = data.hubble_deep_field()
    assert Tone.DARK in tones_of(Image.fromarray(sky))


def test_grayscale_photo_is_neutral_and_muted() -> None:
    camera = np.asarray(data.camera())
    tones = tones_of(Image.fromarray(camera))
    assert {Tone.NEUTRAL, Tone.MUTED} <= tones
