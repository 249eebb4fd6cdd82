"""Colour science against published reference values: sRGB -> Lab, CIEDE2000, tone statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import color as skcolor

from services.common.colour import (
    WARMTH_BY_HUE,
    delta_e_ciede2000,
    linear_to_srgb,
    srgb_to_lab,
    srgb_to_linear,
    tone_stats_from_lab,
)

# --- sRGB -> Lab -------------------------------------------------------------------------

# sRGB (D65) colours with their CIE-Lab as published to 2 decimals (e.g. Lindbloom's and
# EasyRGB's calculators); each value must round to the published one.
PUBLISHED_LAB = [
    ((255, 255, 255), (100.00, 0.00, 0.00)),
    ((0, 0, 0), (0.00, 0.00, 0.00)),
    ((255, 0, 0), (53.24, 80.09, 67.20)),
    ((0, 255, 0), (87.73, -86.18, 83.18)),
    ((0, 0, 255), (32.30, 79.19, -107.86)),
    ((128, 128, 128), (53.59, 0.00, 0.00)),
]


@pytest.mark.parametrize(("rgb", "lab"), PUBLISHED_LAB)
def test_lab_of_known_colours_matches_the_published_values(
    rgb: tuple[int, int, int], lab: tuple[float, float, float]
) -> None:
    assert srgb_to_lab(rgb) == pytest.approx(lab, abs=0.005)


def test_white_is_exactly_the_reference_white() -> None:
    assert srgb_to_lab((255, 255, 255)) == pytest.approx((100.0, 0.0, 0.0), abs=1e-3)


def test_every_grey_is_neutral() -> None:
    # A grey with a hue would cast a warmth vote; the matrix rows must sum to the Lab white.
    lab = srgb_to_lab(np.repeat(np.arange(256)[:, None], 3, axis=1))
    assert np.abs(lab[:, 1:]).max() < 1e-3
    assert np.all(np.diff(lab[:, 0]) > 0)


def test_lab_agrees_with_skimage_within_the_matrix_precision() -> None:
    # skimage's 6-digit sRGB matrix differs from the 7-digit one by at most 0.005 Lab units.
    rgb = np.random.default_rng(1).integers(0, 256, (4000, 3)).astype(np.uint8)
    expected = skcolor.rgb2lab(rgb[None] / 255.0)[0]
    np.testing.assert_allclose(srgb_to_lab(rgb), expected, atol=0.005)


def test_lab_keeps_the_leading_shape() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (4, 5, 3))
    lab = srgb_to_lab(rgb)
    assert lab.shape == (4, 5, 3)
    np.testing.assert_array_equal(lab[2, 3], srgb_to_lab(rgb[2, 3]))


# --- sRGB <-> linear ---------------------------------------------------------------------


def test_linear_light_spans_zero_to_one_and_is_monotonic() -> None:
    linear = srgb_to_linear(np.arange(256))
    assert linear[0] == 0.0 and linear[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(linear) > 0)
    # IEC 61966-2-1: mid sRGB (0.5) is about 21.4% linear light.
    assert srgb_to_linear(127.5) == pytest.approx(0.21404, abs=1e-5)


def test_every_8_bit_level_survives_the_round_trip() -> None:
    levels = np.arange(256, dtype=np.float64)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(levels)), levels, atol=1e-9)


@settings(max_examples=200, deadline=None, database=None)
@given(value=st.floats(min_value=0.0, max_value=255.0))
def test_any_srgb_value_survives_the_round_trip(value: float) -> None:
    assert float(linear_to_srgb(srgb_to_linear(value))) == pytest.approx(value, abs=1e-9)


# --- CIEDE2000 ---------------------------------------------------------------------------

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data, and mathematical observations", table 1: all 34 pairs.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_reproduces_every_published_pair() -> None:
    first = np.array([pair[0] for pair in SHARMA_PAIRS])
    second = np.array([pair[1] for pair in SHARMA_PAIRS])
    published = np.array([pair[2] for pair in SHARMA_PAIRS])
    # The table is rounded to 4 decimals.
    np.testing.assert_allclose(delta_e_ciede2000(first, second), published, atol=5e-5)
    np.testing.assert_allclose(delta_e_ciede2000(second, first), published, atol=5e-5)


def test_ciede2000_agrees_with_skimage_and_broadcasts() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (2000, 3))
    first, second = srgb_to_lab(rgb[:1000]), srgb_to_lab(rgb[1000:])
    np.testing.assert_allclose(
        delta_e_ciede2000(first, second), skcolor.deltaE_ciede2000(first, second), atol=1e-9
    )
    table = delta_e_ciede2000(first[:7, None, :], second[None, :5, :])
    assert table.shape == (7, 5)
    assert table[6, 4] == pytest.approx(delta_e_ciede2000(first[6], second[4]))


lab_colours = st.tuples(
    st.floats(0.0, 100.0), st.floats(-128.0, 127.0), st.floats(-128.0, 127.0)
).map(np.array)


@settings(max_examples=200, deadline=None, database=None)
@given(first=lab_colours, second=lab_colours)
def test_ciede2000_is_symmetric_and_zero_only_on_itself(
    first: np.ndarray, second: np.ndarray
) -> None:
    assert float(delta_e_ciede2000(first, first)) == pytest.approx(0.0, abs=1e-9)
    there, back = float(delta_e_ciede2000(first, second)), float(delta_e_ciede2000(second, first))
    assert there == pytest.approx(back, abs=1e-9)
    assert there >= 0.0


# --- tone statistics ---------------------------------------------------------------------


def test_warmth_knots_cover_the_hue_circle_and_wrap_around() -> None:
    hues, votes = WARMTH_BY_HUE
    assert hues[0] == 0.0 and hues[-1] == 360.0
    assert list(hues) == sorted(hues)
    assert votes[0] == votes[-1]
    assert all(-1.0 <= vote <= 1.0 for vote in votes)


def test_warm_and_cool_colours_vote_their_way_and_greys_do_not_vote() -> None:
    red, blue, grey = srgb_to_lab([(220, 40, 30), (30, 60, 220), (128, 128, 128)])
    assert tone_stats_from_lab([red]).warmth == pytest.approx(1.0)
    assert tone_stats_from_lab([blue]).warmth == pytest.approx(-1.0)
    greys = tone_stats_from_lab([grey, grey])
    assert greys.warmth == 0.0 and greys.mean_chroma == 0.0
    # Half red, half blue by weight: chroma-weighted, so the more saturated blue wins a little.
    mixed = tone_stats_from_lab([red, blue], [1, 1])
    assert -0.2 < mixed.warmth < 0.0


def test_weights_count_each_colour_that_many_times() -> None:
    lab = srgb_to_lab(np.random.default_rng(4).integers(0, 256, (12, 3)))
    counts = np.arange(1, 13)
    weighted = tone_stats_from_lab(lab, counts)
    repeated = tone_stats_from_lab(np.repeat(lab, counts, axis=0))
    assert weighted.mean_lightness == pytest.approx(repeated.mean_lightness)
    assert weighted.lightness_std == pytest.approx(repeated.lightness_std)
    assert weighted.mean_chroma == pytest.approx(repeated.mean_chroma)
    assert weighted.warmth == pytest.approx(repeated.warmth)


def test_black_and_white_halves_have_the_textbook_contrast() -> None:
    stats = tone_stats_from_lab(srgb_to_lab([(0, 0, 0), (255, 255, 255)]))
    assert stats.mean_lightness == pytest.approx(50.0, abs=1e-3)
    assert stats.lightness_std == pytest.approx(50.0, abs=1e-3)
