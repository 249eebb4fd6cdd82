"""Colour science every service shares: sRGB <-> linear light, sRGB -> CIE-Lab (D65), CIEDE2000,
and the tone statistics (lightness, contrast, chroma, warmth) that tone words are read from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

# sRGB -> CIE XYZ: the IEC 61966-2-1 primaries scaled to the D65 white that Lab divides by
# (ASTM E308's 0.95047, 1, 1.08883), to 7 digits. Each row then sums to that white, so every
# grey has a* = b* = 0 (to 2e-5). The 6-digit matrix of older sources (skimage.color.rgb2lab's)
# is scaled to a slightly different white: it gives white b* = +0.005, a hue on a grey pixel.
# The two agree within 0.005 Lab units on every sRGB colour.
_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
# CIE Lab's f(t): a cube root above _LAB_DELTA**3, a straight line below that meets it there.
_LAB_DELTA = 6 / 29


def srgb_to_linear(rgb: ArrayLike) -> NDArray[np.float64]:
    """sRGB on the 0–255 scale (integer or not) to linear light in [0, 1], elementwise."""
    channel = np.asarray(rgb, dtype=np.float64) / 255.0
    linear: NDArray[np.float64] = np.where(
        channel <= 0.04045, channel / 12.92, ((channel + 0.055) / 1.055) ** 2.4
    )
    return linear


def linear_to_srgb(linear: ArrayLike) -> NDArray[np.float64]:
    """Linear light in [0, 1] to sRGB on the 0–255 scale (unrounded), elementwise."""
    value = np.asarray(linear, dtype=np.float64)
    # np.where evaluates both branches: clamping keeps the power branch from warning on the
    # negative values that the linear branch handles anyway.
    encoded = np.where(
        value <= 0.0031308, value * 12.92, 1.055 * np.maximum(value, 0.0) ** (1 / 2.4) - 0.055
    )
    srgb: NDArray[np.float64] = encoded * 255.0
    return srgb


def srgb_to_lab(rgb: ArrayLike) -> NDArray[np.float64]:
    """(..., 3) sRGB on the 0–255 scale to CIE-Lab (D65, 2° observer), vectorised.

    Written out rather than taken from skimage: the featurizer converts a few thousand colours
    an image, where skimage's per-call overhead would dominate.
    """
    xyz = srgb_to_linear(rgb) @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > _LAB_DELTA**3, np.cbrt(xyz), xyz / (3 * _LAB_DELTA**2) + 4 / 29)
    lab: NDArray[np.float64] = np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )
    return lab


def delta_e_ciede2000(lab1: ArrayLike, lab2: ArrayLike) -> NDArray[np.float64]:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), broadcasting over leading axes."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    c_mean7 = ((c1 + c2) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c_mean7 / (c_mean7 + 25.0**7)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    chroma_product = c1p * c2p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    # Sharma et al. eq. 10-14: a hue difference or mean is undefined when a chroma is 0.
    dh = np.where(chroma_product == 0, 0.0, dh)
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * np.sqrt(chroma_product) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(
        chroma_product == 0,
        h_sum,
        np.where(
            np.abs(h1p - h2p) <= 180,
            h_sum / 2,
            np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2),
        ),
    )
    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * c_mean
    s_h = 1 + 0.015 * c_mean * t
    c_mean7p = c_mean**7
    r_t = (
        -2
        * np.sqrt(c_mean7p / (c_mean7p + 25.0**7))
        * np.sin(np.radians(60 * np.exp(-(((h_mean - 275) / 25) ** 2))))
    )
    result: NDArray[np.float64] = np.sqrt(
        (d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h)
    )
    return result


WARMTH_BY_HUE: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.0, 100.0, 115.0, 130.0, 310.0, 328.0, 345.0, 360.0),
    (1.0, 1.0, 0.0, -1.0, -1.0, 0.0, 1.0, 1.0),
)
"""Knots (Lab hue angle in degrees, warmth vote), interpolated linearly. Pink sits near 8°,
red 40°, orange 64°, yellow 103°, green 136°, cyan 196°, blue 306°, magenta 328°: warm from
pink to yellow, cool from green through blue to indigo, magenta/purple undecided."""
ACHROMATIC_CHROMA = 1.0
"""Chroma under one Lab unit is rounding noise of a grey pixel: it casts no hue vote."""


@dataclass(frozen=True)
class ToneStats:
    """The measurements tone words are read from (pixel-weighted, Lab units)."""

    mean_lightness: float
    """Mean L*, 0–100."""
    lightness_std: float
    mean_chroma: float
    warmth: float
    """Chroma-weighted hue vote in [-1, 1]: +1 all warm hues, -1 all cool, 0 grey or balanced."""


def tone_stats_from_lab(
    lab: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    achromatic_chroma: float = ACHROMATIC_CHROMA,
) -> ToneStats:
    """Lightness, contrast, chroma and warmth of (N, 3) Lab colours, each counted ``weights``
    times (once when None). Chroma under ``achromatic_chroma`` counts as 0 and casts no vote."""
    values = np.asarray(lab, dtype=np.float64)
    lightness, a, b = values[:, 0], values[:, 1], values[:, 2]
    weight = None if weights is None else np.asarray(weights, dtype=np.float64)
    mean_lightness = float(np.average(lightness, weights=weight))
    lightness_std = float(np.sqrt(np.average((lightness - mean_lightness) ** 2, weights=weight)))
    chroma = np.hypot(a, b)
    chroma = np.where(chroma < achromatic_chroma, 0.0, chroma)
    mean_chroma = float(np.average(chroma, weights=weight))
    votes = np.interp(np.degrees(np.arctan2(b, a)) % 360, *WARMTH_BY_HUE)
    chroma_mass = chroma if weight is None else weight * chroma
    total = float(chroma_mass.sum())
    # Nothing to vote on (an all-grey image): 0, not 0/0. With the achromatic cut-off the total
    # is either 0 or at least 1, so the threshold only matters when the cut-off is off.
    warmth = float((votes * chroma_mass).sum() / total) if total > 1e-6 else 0.0
    return ToneStats(
        mean_lightness=mean_lightness,
        lightness_std=lightness_std,
        mean_chroma=mean_chroma,
        warmth=warmth,
    )
