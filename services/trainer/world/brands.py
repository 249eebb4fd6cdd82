"""Fictional brands of the synthetic world: audience, posting habits, voice and hidden taste.

A brand's :class:`Taste` is the hidden part: only :mod:`.ground_truth` reads it to score a
creative, and :mod:`.generate` reads it to bias what the brand's designers draw (real brands
also lean towards what works for them, which is what gives a KPI model something to learn).
Nothing of the taste is written next to the generated data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

RGB = tuple[int, int, int]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""The object classes of the featurizer's default detector (``services.featurizer.shapes``);
the world draws only these, so the detector can see every object the ground truth rewards."""

REFERENCE_YEAR = 2020.0
"""Year (fractional, UTC) at which growth and tone drift are zero; effects scale linearly
with the distance from it."""


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
    """Tone preference at :data:`REFERENCE_YEAR`."""
    tone_drift_per_year: TonePreference
    """Added to ``tones`` per year after :data:`REFERENCE_YEAR` (each axis clipped to ±1)."""
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


@dataclass(frozen=True)
class PostingHabits:
    """When and how the brand posts: visible in its data, not part of the hidden taste."""

    hours: tuple[int, ...]
    """Hours of day (UTC) the brand usually posts at; a quarter of posts go out at any hour."""
    weekday_weights: tuple[float, float, float, float, float, float, float]
    """Relative posting frequency per weekday, Monday first."""
    text_overlay_rate: float
    """Share of creatives that carry overlay text."""
    taste_share: float
    """Probability that a creative follows the audience's taste (its colours and shapes)
    rather than the brand's house style: 0 gives a KPI with no learnable creative signal,
    1 gives no contrast to learn from."""
    house_palette: tuple[RGB, ...]
    """The house style's colours: what the designers use when a creative does not follow the
    audience's taste. Real brands repeat their own look, liked or not, so a brand's weaker
    posts look like something too, and what a post should look like to reach a level differs
    in place, not only in spread."""
    house_shapes: tuple[str, ...]
    """Object classes of the house style (any of :data:`SHAPE_CLASSES`)."""

    def __post_init__(self) -> None:
        _check_classes(self.house_shapes)


@dataclass(frozen=True)
class Voice:
    """The words of the brand's posts: ``{opener} {product} {closer}`` and keywords."""

    openers: tuple[str, ...]
    products: tuple[str, ...]
    closers: tuple[str, ...]
    keywords: tuple[str, ...]
    overlay_texts: tuple[str, ...]
    """Short slogans drawn onto creatives (a dozen characters or so, to fit the image)."""


@dataclass(frozen=True)
class Brand:
    """A fictional brand. ``audience × base_rate`` is its KPI scale at the reference year."""

    name: str
    account: str
    """Account handle, as in BoigBench rows (no leading @)."""
    audience: float
    """Followers at :data:`REFERENCE_YEAR`: multiplies every KPI of the brand."""
    base_rate: float
    """Likes per follower of a post with no taste or time effect."""
    taste: Taste = field(repr=False)
    habits: PostingHabits
    voice: Voice

    @property
    def kpi_scale(self) -> float:
        """Median KPI of a neutral post at the reference year (before noise)."""
        return self.audience * self.base_rate


def _check_classes(labels: Iterable[str]) -> None:
    unknown = set(labels) - set(SHAPE_CLASSES)
    if unknown:
        raise ValueError(f"unknown object classes {sorted(unknown)}; known: {SHAPE_CLASSES}")


def _effects(**effects: float) -> Mapping[str, float]:
    _check_classes(effects)
    # Read-only, so a frozen Brand stays immutable all the way down.
    return MappingProxyType(dict(effects))


COFFEE = Brand(
    name="Ember & Bean",
    account="emberbean",
    audience=40_000,
    base_rate=0.025,
    taste=Taste(
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
    ),
    habits=PostingHabits(
        hours=(6, 7, 8, 9, 15),
        weekday_weights=(1.0, 1.0, 1.0, 1.0, 1.2, 1.5, 1.3),
        text_overlay_rate=0.3,
        taste_share=0.5,
        house_palette=((60, 62, 72), (176, 58, 92), (92, 140, 200)),
        house_shapes=("square", "star"),
    ),
    voice=Voice(
        openers=("Slow mornings call for", "Meet our new", "Warm up with", "Back by demand:"),
        products=("oat flat white", "single-origin pour-over", "cinnamon bun", "cold brew"),
        closers=("See you at the bar.", "Made with care.", "Your cup is waiting.", "☕"),
        keywords=("coffee", "espresso", "cafe", "morning", "latte", "beans", "barista"),
        overlay_texts=("FRESH ROAST", "OPEN 7AM", "NEW BLEND", "SIP SLOW"),
    ),
)

SPORTSWEAR = Brand(
    name="Stride Athletics",
    account="stride",
    audience=250_000,
    base_rate=0.01,
    taste=Taste(
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
    ),
    habits=PostingHabits(
        hours=(11, 12, 17, 18, 19),
        weekday_weights=(1.4, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2),
        text_overlay_rate=0.5,
        taste_share=0.5,
        house_palette=((205, 70, 35), (125, 125, 135), (85, 45, 125)),
        house_shapes=("circle", "square"),
    ),
    voice=Voice(
        openers=("Built for race day:", "Go further in the", "New drop:", "Train harder with the"),
        products=("Velocity runner", "Apex training tee", "Trail shell jacket", "Pace shorts"),
        closers=("No finish line.", "Move first.", "Own the morning run.", "Out now."),
        keywords=("running", "training", "fitness", "sneakers", "marathon", "gym", "sport"),
        overlay_texts=("RUN FAST", "NEW DROP", "NO LIMITS", "GO"),
    ),
)

BANK = Brand(
    name="Northgate Bank",
    account="northgatebank",
    audience=80_000,
    base_rate=0.004,
    taste=Taste(
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
    ),
    habits=PostingHabits(
        hours=(9, 10, 12, 14),
        weekday_weights=(1.2, 1.2, 1.2, 1.2, 1.0, 0.3, 0.2),
        text_overlay_rate=0.6,
        taste_share=0.5,
        house_palette=((205, 165, 45), (150, 30, 45), (110, 110, 110)),
        house_shapes=("triangle", "circle"),
    ),
    voice=Voice(
        openers=("Plan ahead with", "Introducing", "Good news about", "Take control with"),
        products=("our savings account", "the mortgage calculator", "instant transfers", "the app"),
        closers=("Banking made simple.", "Terms apply.", "Here when you need us.", "Learn more."),
        keywords=("bank", "savings", "finance", "mortgage", "budget", "money", "app"),
        overlay_texts=("SAVE MORE", "0% FEES", "PLAN AHEAD", "SECURE"),
    ),
)

TOY_SHOP = Brand(
    name="Pip & Pop Toys",
    account="pippoptoys",
    audience=15_000,
    base_rate=0.03,
    taste=Taste(
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
    ),
    habits=PostingHabits(
        hours=(10, 15, 16, 17, 20),
        weekday_weights=(0.8, 0.8, 1.0, 1.0, 1.2, 1.6, 1.4),
        text_overlay_rate=0.25,
        taste_share=0.5,
        house_palette=((120, 98, 78), (205, 200, 188), (40, 92, 62)),
        house_shapes=("square", "triangle"),
    ),
    voice=Voice(
        openers=("Playtime just got better:", "Say hello to the", "Fresh on our shelves:"),
        products=("rainbow stacker", "wooden train set", "plush dino", "puzzle cube"),
        closers=("Ages 3 and up.", "Made for tiny hands.", "Let's play!", "Gift-wrapped free."),
        keywords=("toys", "kids", "play", "gifts", "family", "learning", "fun"),
        overlay_texts=("PLAY!", "NEW TOYS", "FUN", "SALE"),
    ),
)

DEFAULT_BRANDS: tuple[Brand, ...] = (COFFEE, SPORTSWEAR, BANK, TOY_SHOP)

SUNBREW = Brand(
    name="Sunbrew",
    account="sunbrew",
    audience=15_000,
    base_rate=0.03,
    taste=dataclasses.replace(
        COFFEE.taste,
        palette=((20, 150, 150), (250, 120, 90), (250, 240, 220)),
        late_palette=((20, 150, 150), (250, 120, 90), (240, 200, 60)),
        tones=TonePreference(lightness=0.3, saturation=0.3, warmth=0.2),
        object_effects=_effects(star=0.4, square=-0.3),
    ),
    habits=dataclasses.replace(
        COFFEE.habits,
        house_palette=((80, 60, 110), (200, 200, 205), (40, 90, 60)),
        house_shapes=("circle", "triangle"),
    ),
    voice=dataclasses.replace(
        COFFEE.voice,
        openers=("Sunny days call for", "Try our", "Cool off with", "New this week:"),
        products=("iced latte", "cold brew tonic", "lemon pastry", "orange espresso"),
        keywords=("coffee", "summer", "iced", "sale", "cafe", "sun"),
    ),
)
"""A brand outside DEFAULT_BRANDS: the account BoigLLM is never trained on, for the held-out
account evaluation and the demo's new account (the sample request's ``sunbrew``)."""
