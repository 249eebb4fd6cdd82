"""Bootstrap intervals: exact on degenerate inputs, sensible widths, reproducible by seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.trainer.evaluate.bootstrap import (
    bootstrap_mean,
    bootstrap_statistic,
    intervals_separate,
)
from services.trainer.evaluate.metrics import spearman
from services.trainer.evaluate.results import Better, Estimate


def normal_sample(n: int, seed: int = 42) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).normal(0.0, 1.0, size=n)]


def test_constant_values_give_the_value_as_interval() -> None:
    assert bootstrap_mean([0.1] * 7) == Estimate(value=0.1, low=0.1, high=0.1, n=7)
    assert bootstrap_mean([0.3]) == Estimate(value=0.3, low=0.3, high=0.3, n=1)


def test_none_rows_are_left_out() -> None:
    estimate = bootstrap_mean([1.0, None, 0.0, None])
    assert estimate is not None
    assert estimate.n == 2
    assert estimate.value == 0.5
    assert bootstrap_mean([None, None]) is None
    assert bootstrap_mean([]) is None


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean([1.0, math.nan])


def test_interval_contains_the_mean_and_narrows_with_n() -> None:
    small = bootstrap_mean(normal_sample(25))
    large = bootstrap_mean(normal_sample(2500))
    assert small is not None and large is not None
    for estimate in (small, large):
        assert estimate.low < estimate.value < estimate.high
    assert large.high - large.low < (small.high - small.low) / 5


def test_interval_width_matches_the_normal_approximation() -> None:
    # For n = 400 standard-normal values the 95% interval of the mean is about
    # 2 x 1.96 x sd / sqrt(n) wide; a wrong quantile pair (e.g. 5%/95%) would miss by 16%.
    values = normal_sample(400)
    estimate = bootstrap_mean(values, resamples=4000)
    assert estimate is not None
    expected = 2 * 1.96 * float(np.std(values, ddof=1)) / math.sqrt(400)
    assert estimate.high - estimate.low == pytest.approx(expected, rel=0.08)
    narrower = bootstrap_mean(values, confidence=0.5, resamples=4000)
    assert narrower is not None
    assert narrower.high - narrower.low == pytest.approx(expected * 0.674 / 1.96, rel=0.1)


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    values = normal_sample(50)
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    first, second = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=4)
    assert first is not None and second is not None
    assert first.value == second.value
    assert (first.low, first.high) != (second.low, second.high)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_mean([1.0, 2.0], resamples=0)


def test_statistic_of_the_mean_agrees_with_bootstrap_mean() -> None:
    values = np.array(normal_sample(60))
    by_rows = bootstrap_statistic(
        len(values), lambda rows: float(values[rows].mean()), confidence=0.9, resamples=500, seed=1
    )
    direct = bootstrap_mean(list(values), confidence=0.9, resamples=500, seed=1)
    assert by_rows is not None and direct is not None
    assert by_rows.value == pytest.approx(direct.value)
    assert by_rows.low == pytest.approx(direct.low)
    assert by_rows.high == pytest.approx(direct.high)
    assert by_rows.n == direct.n == 60


def test_spearman_of_a_monotone_set_is_one_in_every_resample() -> None:
    scores = np.arange(10, dtype=float)
    targets = scores**2
    estimate = bootstrap_statistic(
        10, lambda rows: spearman(list(scores[rows]), list(targets[rows])), resamples=300
    )
    assert estimate is not None
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((1.0, 1.0, 1.0))


def test_undefined_statistic_gives_no_estimate() -> None:
    assert bootstrap_statistic(5, lambda rows: None) is None
    assert bootstrap_statistic(5, lambda rows: math.nan) is None
    assert bootstrap_statistic(0, lambda rows: 1.0) is None


def test_undefined_resamples_are_skipped() -> None:
    # Undefined whenever a resample repeats a row: only the defined draws form the interval.
    def distinct_rows(rows: np.ndarray) -> float | None:
        return 1.0 if len(set(rows.tolist())) == len(rows) else None

    assert bootstrap_statistic(3, distinct_rows, resamples=200) == Estimate(1.0, 1.0, 1.0, 3)


@pytest.mark.parametrize(
    ("a", "b", "better", "expected"),
    [
        (Estimate(0.8, 0.7, 0.9, 10), Estimate(0.5, 0.4, 0.6, 10), Better.HIGHER, True),
        (Estimate(0.5, 0.4, 0.6, 10), Estimate(0.8, 0.7, 0.9, 10), Better.HIGHER, False),
        (Estimate(0.8, 0.6, 0.9, 10), Estimate(0.5, 0.4, 0.65, 10), Better.HIGHER, False),
        (Estimate(10.0, 8.0, 12.0, 10), Estimate(30.0, 25.0, 35.0, 10), Better.LOWER, True),
        (Estimate(30.0, 25.0, 35.0, 10), Estimate(10.0, 8.0, 12.0, 10), Better.LOWER, False),
        (Estimate(10.0, 8.0, 26.0, 10), Estimate(30.0, 25.0, 35.0, 10), Better.LOWER, False),
    ],
)
def test_intervals_separate(a: Estimate, b: Estimate, better: Better, expected: bool) -> None:
    assert intervals_separate(a, b, better) is expected
