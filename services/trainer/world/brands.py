"""Fictional brands of the synthetic world: the public facts (audience, posting habits, voice).

What each brand's audience likes is hidden and lives in :mod:`.tastes`, beside the KPI
function; training code may import this module without getting it (a unit test checks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from services.common.shapes import check_shape_classes

RGB = tuple[int, int, int]

REFERENCE_YEAR = 2020.0
"""Year (fractional, UTC) at which growth and tone drift are zero; effects scale linearly
with the distance from it."""


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
    """Object classes of the house style (any of ``services.common.shapes.SHAPE_CLASSES``)."""

    def __post_init__(self) -> None:
        check_shape_classes(self.house_shapes)


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
    habits: PostingHabits
    voice: Voice

    @property
    def kpi_scale(self) -> float:
        """Median KPI of a neutral post at the reference year (before noise)."""
        return self.audience * self.base_rate


COFFEE = Brand(
    name="Ember & Bean",
    account="emberbean",
    audience=40_000,
    base_rate=0.025,
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
