"""The hidden KPI function: brand scale, a real taste signal, time effects and drift."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from services.trainer.world.brands import BANK, COFFEE, DEFAULT_BRANDS, TOY_SHOP, Brand
from services.trainer.world.generate import sample_creative_spec
from services.trainer.world.ground_truth import (
    draw_kpi,
    expected_kpi,
    expected_log_kpi,
    fractional_year,
    log_kpi_breakdown,
    palette_match,
)
from services.trainer.world.render import (
    CreativeAttributes,
    CreativeSpec,
    ShapeSpec,
    render_creative,
)
from services.trainer.world.tastes import taste_of

NOON = datetime(2020, 6, 3, 12, 0, tzinfo=UTC)  # a Wednesday


def _attributes(spec: CreativeSpec) -> CreativeAttributes:
    return render_creative(spec, size=64)[1]


def _spec(background: tuple[int, int, int], *labels: str) -> CreativeSpec:
    shapes = tuple(
        ShapeSpec(
            label=label,
            rgb=(128, 128, 128),
            center=(0.25 + 0.5 * (i % 2), 0.3 + 0.4 * (i // 2)),
            radius=0.15,
            rotation=0.0,
        )
        for i, label in enumerate(labels)
    )
    return CreativeSpec(background=(background,), gradient_angle=0.0, shapes=shapes)


def test_kpi_scales_with_the_brand_audience() -> None:
    attributes = _attributes(_spec((200, 100, 50), "circle"))
    bigger = dataclasses.replace(COFFEE, audience=COFFEE.audience * 3)
    ratio = expected_kpi(attributes, bigger, NOON) / expected_kpi(attributes, COFFEE, NOON)
    assert ratio == pytest.approx(3.0)


def test_drawn_kpis_are_positive_and_centre_on_the_expected_value() -> None:
    attributes = _attributes(_spec((111, 78, 55), "circle"))
    rng = np.random.default_rng(0)
    draws = np.array([draw_kpi(rng, attributes, COFFEE, NOON) for _ in range(4000)])
    assert draws.min() > 0
    assert draws.mean() == pytest.approx(expected_kpi(attributes, COFFEE, NOON), rel=0.03)


@pytest.mark.parametrize("brand", DEFAULT_BRANDS, ids=lambda brand: brand.account)
def test_liked_objects_earn_more_than_disliked_ones(brand: Brand) -> None:
    effects = taste_of(brand).object_effects
    liked = max(effects, key=lambda label: effects[label])
    disliked = min(effects, key=lambda label: effects[label])
    with_liked = log_kpi_breakdown(_attributes(_spec((90, 90, 90), liked)), brand, NOON)
    with_disliked = log_kpi_breakdown(_attributes(_spec((90, 90, 90), disliked)), brand, NOON)
    assert with_liked.objects - with_disliked.objects == pytest.approx(
        effects[liked] - effects[disliked]
    )
    # Same ground, same colour: the swap of one shape for another barely moves the rest.
    assert with_liked.total > with_disliked.total


@pytest.mark.parametrize("brand", DEFAULT_BRANDS, ids=lambda brand: brand.account)
def test_sampled_creatives_carry_a_learnable_taste_signal(brand: Brand) -> None:
    """Across many creatives the brand's designers draw, observed log-KPIs separate
    on-taste from off-taste creatives: the signal a KPI model is supposed to find."""
    rng = np.random.default_rng(7)
    year, taste = fractional_year(NOON), taste_of(brand)
    liked = {label for label, effect in taste.object_effects.items() if effect > 0}
    disliked = {label for label, effect in taste.object_effects.items() if effect < 0}
    with_liked, with_disliked, matches, log_kpis = [], [], [], []
    for _ in range(300):
        attributes = _attributes(sample_creative_spec(rng, brand, year))
        log_kpi = math.log(max(1, draw_kpi(rng, attributes, brand, NOON)))
        labels = {obj.label for obj in attributes.objects}
        if labels & liked and not labels & disliked:
            with_liked.append(log_kpi)
        if labels & disliked and not labels & liked:
            with_disliked.append(log_kpi)
        matches.append(palette_match(attributes, taste.palette))
        log_kpis.append(log_kpi)
    assert len(with_liked) > 30 and len(with_disliked) > 10
    assert np.mean(with_liked) - np.mean(with_disliked) > 0.3
    on_palette = np.array(matches) > np.median(matches)
    kpis = np.array(log_kpis)
    assert kpis[on_palette].mean() - kpis[~on_palette].mean() > 0.15
    assert np.corrcoef(matches, kpis)[0, 1] > 0.2


def test_audience_peak_hour_and_weekday_matter() -> None:
    attributes = _attributes(_spec((20, 40, 90)))
    peak = datetime(2020, 6, 3, 12, tzinfo=UTC)
    night = datetime(2020, 6, 3, 0, tzinfo=UTC)
    sunday = datetime(2020, 6, 7, 12, tzinfo=UTC)
    assert expected_log_kpi(attributes, BANK, peak) - expected_log_kpi(
        attributes, BANK, night
    ) == pytest.approx(2 * taste_of(BANK).hour_effect, abs=0.01)  # plus 12 hours of growth
    assert expected_log_kpi(attributes, BANK, sunday) < expected_log_kpi(attributes, BANK, peak)


def test_kpis_grow_over_the_years() -> None:
    attributes = _attributes(_spec((128, 128, 128)))
    early = log_kpi_breakdown(attributes, BANK, datetime(2018, 3, 1, tzinfo=UTC))
    late = log_kpi_breakdown(attributes, BANK, datetime(2023, 3, 1, tzinfo=UTC))
    assert late.growth - early.growth == pytest.approx(
        5 * (0.1 + taste_of(BANK).audience_growth_per_year), rel=0.01
    )


def test_palette_preference_drifts_to_the_late_palette() -> None:
    brand, taste = TOY_SHOP, taste_of(TOY_SHOP)
    early_colour = _attributes(_spec(taste.palette[0]))
    late_colour = _attributes(_spec(taste.late_palette[0]))
    before = datetime(int(taste.palette_shift_years[0]) - 1, 6, 1, tzinfo=UTC)
    after = datetime(int(taste.palette_shift_years[1]) + 1, 6, 1, tzinfo=UTC)
    assert log_kpi_breakdown(early_colour, brand, before).palette > 0.9 * taste.palette_weight
    assert log_kpi_breakdown(early_colour, brand, after).palette < 0.1
    assert log_kpi_breakdown(late_colour, brand, after).palette > 0.9 * taste.palette_weight
    assert log_kpi_breakdown(late_colour, brand, before).palette < 0.1


def test_fractional_year_treats_naive_times_as_utc() -> None:
    assert fractional_year(datetime(2021, 1, 1)) == 2021.0
    assert fractional_year(datetime(2021, 7, 2, 12, tzinfo=UTC)) == pytest.approx(2021.5, abs=0.01)
