"""The hidden tastes of the synthetic world's brands: what each audience likes (design §7).

Hidden like :mod:`.ground_truth`, which scores creatives with them; :mod:`.generate` also reads
them to bias what the brand's designers draw (real brands lean towards what works for them,
which is what gives a KPI model something to learn). Training code must never import this
module (a unit test follows every import under ``services/`` to check), and nothing of a taste
is written next to the generated data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from services.common.shapes import check_shape_classes
from services.trainer.world.brands import (
    BANK,
    COFFEE,
    RGB,
    SPORTSWEAR,
    SUNBREW,
    TOY_SHOP,
    Brand,
)


@dataclass(frozen=True)
class TonePreference:
    """Log-KPI effect of an image at the positive end of each tone axis.

    Each axis of a creative is measured in [-1, 1] (see ``ground_truth.tone_axes``) and
    multiplied by the preference: ``lightness`` 0.4 means a fully bright image gains 0.4 in
    log-KPI and a fully dark one loses 0.4.
    """

    lightness: float = 0.0
    """Bright (+) versus dark (-)."""
    saturation: float = 0.0
    """Saturated (+) versus muted (-)."""
    warmth: float = 0.0
    """Warm hues (+) versus cool hues (-)."""
    contrast: float = 0.0
    """High (+) versus low (-) lightness contrast."""


@dataclass(frozen=True)
class Taste:
    """What the brand's audience likes. Hidden: read by ``ground_truth`` and the sampler only."""

    palette: tuple[RGB, ...]
    """Preferred colours (sRGB). A creative gains up to ``palette_weight`` in log-KPI by
    covering its area with colours close (CIE76) to one of them."""
    late_palette: tuple[RGB, ...]
    """Preferred colours after the taste has drifted (see ``palette_shift_years``)."""
    palette_shift_years: tuple[float, float]
    """Fractional years between which the preference moves linearly from ``palette`` to
    ``late_palette``; before the first it is all ``palette``, after the second all
    ``late_palette``."""
    palette_weight: float
    """Log-KPI gain of a creative covered entirely by a preferred colour."""
    tones: TonePreference
    """Tone preference at ``brands.REFERENCE_YEAR``."""
    tone_drift_per_year: TonePreference
    """Added to ``tones`` per year after ``brands.REFERENCE_YEAR`` (each axis clipped to ±1)."""
    object_effects: Mapping[str, float]
    """Log-KPI effect of each object class present in the creative (counted once per
    class); classes not listed have no effect. Positive: liked; negative: disliked."""
    text_effect: float
    """Log-KPI effect of overlay text on the creative."""
    peak_hour: float
    """Hour of day (UTC) at which the audience is most responsive."""
    hour_effect: float
    """Amplitude of the daily cycle in log-KPI: +this at ``peak_hour``, -this 12 hours off."""
    weekday_effects: tuple[float, float, float, float, float, float, float]
    """Log-KPI effect of each weekday, Monday first."""
    audience_growth_per_year: float
    """The brand's own log-KPI growth per year, on top of the platform's."""
    noise_sigma: float
    """Standard deviation of the log-normal noise on each post's KPI."""


def _effects(**effects: float) -> Mapping[str, float]:
    check_shape_classes(effects)
    # Read-only, so a frozen Taste stays immutable all the way down.
    return MappingProxyType(dict(effects))


_COFFEE = Taste(
    palette=((111, 78, 55), (236, 222, 200), (222, 120, 40)),
    late_palette=((236, 222, 200), (150, 190, 150), (111, 78, 55)),
    palette_shift_years=(2019.0, 2023.0),
    palette_weight=1.0,
    tones=TonePreference(lightness=0.1, saturation=-0.2, warmth=0.5),
    tone_drift_per_year=TonePreference(lightness=0.05),
    object_effects=_effects(circle=0.45, star=-0.35),
    text_effect=-0.1,
    peak_hour=8.0,
    hour_effect=0.25,
    weekday_effects=(-0.05, -0.05, 0.0, 0.0, 0.05, 0.15, 0.2),
    audience_growth_per_year=0.05,
    noise_sigma=0.3,
)

_SPORTSWEAR = Taste(
    palette=((20, 20, 25), (190, 240, 30), (245, 245, 245)),
    late_palette=((20, 20, 25), (30, 90, 240), (245, 245, 245)),
    palette_shift_years=(2020.0, 2022.0),
    palette_weight=0.9,
    tones=TonePreference(lightness=-0.2, saturation=0.3, contrast=0.5),
    tone_drift_per_year=TonePreference(warmth=-0.05),
    object_effects=_effects(triangle=0.5, star=0.2, circle=-0.3),
    text_effect=0.2,
    peak_hour=18.0,
    hour_effect=0.3,
    weekday_effects=(0.1, 0.0, 0.0, 0.0, -0.05, 0.1, 0.15),
    audience_growth_per_year=0.12,
    noise_sigma=0.35,
)

_BANK = Taste(
    palette=((20, 40, 90), (245, 245, 245), (0, 128, 128)),
    late_palette=((20, 40, 90), (245, 245, 245), (0, 170, 150)),
    palette_shift_years=(2018.0, 2024.0),
    palette_weight=0.8,
    tones=TonePreference(saturation=-0.3, warmth=-0.4, contrast=-0.1),
    tone_drift_per_year=TonePreference(),
    object_effects=_effects(square=0.4, triangle=-0.2, star=-0.5),
    text_effect=0.3,
    peak_hour=12.0,
    hour_effect=0.2,
    weekday_effects=(0.1, 0.1, 0.1, 0.1, 0.0, -0.3, -0.3),
    audience_growth_per_year=0.02,
    noise_sigma=0.25,
)

_TOY_SHOP = Taste(
    palette=((230, 40, 40), (250, 210, 30), (60, 160, 240)),
    late_palette=((240, 110, 180), (250, 210, 30), (150, 90, 220)),
    palette_shift_years=(2019.0, 2022.0),
    palette_weight=1.0,
    tones=TonePreference(lightness=0.4, saturation=0.5),
    tone_drift_per_year=TonePreference(saturation=0.03),
    object_effects=_effects(star=0.6, circle=0.3, square=-0.3),
    text_effect=-0.2,
    peak_hour=16.0,
    hour_effect=0.2,
    weekday_effects=(-0.1, -0.1, 0.0, 0.0, 0.05, 0.2, 0.2),
    audience_growth_per_year=0.08,
    noise_sigma=0.3,
)

_SUNBREW = dataclasses.replace(
    _COFFEE,
    palette=((20, 150, 150), (250, 120, 90), (250, 240, 220)),
    late_palette=((20, 150, 150), (250, 120, 90), (240, 200, 60)),
    tones=TonePreference(lightness=0.3, saturation=0.3, warmth=0.2),
    object_effects=_effects(star=0.4, square=-0.3),
)


TASTES: Mapping[str, Taste] = MappingProxyType(
    {
        COFFEE.account: _COFFEE,
        SPORTSWEAR.account: _SPORTSWEAR,
        BANK.account: _BANK,
        TOY_SHOP.account: _TOY_SHOP,
        SUNBREW.account: _SUNBREW,
    }
)
"""Each brand's taste by account: every brand of :mod:`.brands` has one."""


def taste_of(brand: Brand) -> Taste:
    """The hidden taste of ``brand``'s audience (looked up by account)."""
    try:
        return TASTES[brand.account]
    except KeyError:
        raise KeyError(f"no taste for account {brand.account!r}; known: {sorted(TASTES)}") from None
