"""Bootstrap confidence intervals for the evaluation's metrics.

What is resampled is the set of held-out rows (posts), never the methods: every method is
scored on the same rows, and the interval says how much a score would move on another draw of
posts from the same period. Intervals are percentile bootstrap intervals: they need no
normality assumption (box IoU and tone agreement are bounded and skewed, Spearman is not a
mean at all), they stay inside the metric's range, and one recipe serves means and statistics
over sets of rows alike. A fixed seed makes a report reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from services.trainer.evaluate.results import Better, Estimate

IndexArray = npt.NDArray[np.intp]
RowStatistic = Callable[[IndexArray], float | None]
"""Row indices (with repeats) -> the statistic over those rows, or None where undefined."""


def _check(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")


def _resample_indices(n: int, resamples: int, seed: int) -> IndexArray:
    """A (resamples, n) matrix of row indices drawn with replacement; memory grows as
    resamples x n, a few MB for evaluation sets of a few thousand rows."""
    rng = np.random.default_rng(seed)
    indices: IndexArray = rng.integers(0, n, size=(resamples, n), dtype=np.intp)
    return indices


def _percentile_interval(
    samples: npt.NDArray[np.float64], confidence: float
) -> tuple[float, float]:
    low, high = np.quantile(samples, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def bootstrap_mean(
    values: Sequence[float | None],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate | None:
    """The mean of the rows where a metric applies, with its percentile bootstrap interval.

    None values (the metric does not apply to that row) are dropped first; None when nothing
    is left. NaN is refused: it would silently turn the whole interval into NaN. When all
    values are equal (n == 1 included) the interval is that value exactly.
    """
    _check(confidence, resamples)
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return None
    if not np.all(np.isfinite(kept)):
        raise ValueError("metric values must be finite (use None for rows where it does not apply)")
    n = int(kept.size)
    if np.all(kept == kept[0]):
        only = float(kept[0])
        return Estimate(value=only, low=only, high=only, n=n)
    means = kept[_resample_indices(n, resamples, seed)].mean(axis=1)
    low, high = _percentile_interval(means, confidence)
    return Estimate(value=float(kept.mean()), low=low, high=high, n=n)


def bootstrap_statistic(
    n: int,
    statistic: RowStatistic,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate | None:
    """A statistic over a set of ``n`` rows (e.g. Spearman), with its percentile interval.

    ``statistic`` receives row indices: ``arange(n)`` for the point estimate, a resample with
    repeats for each bootstrap draw. Draws where the statistic is undefined (None or NaN, e.g.
    a resample whose scores are all equal) are skipped, so the interval is conditional on the
    statistic being defined. None when the point estimate is undefined, or no draw is.
    """
    _check(confidence, resamples)
    if n < 1:
        return None
    value = statistic(np.arange(n, dtype=np.intp))
    if value is None or math.isnan(value):
        return None
    draws = [statistic(indices) for indices in _resample_indices(n, resamples, seed)]
    defined = np.array([d for d in draws if d is not None and not math.isnan(d)], dtype=np.float64)
    if defined.size == 0:
        return None
    low, high = _percentile_interval(defined, confidence)
    return Estimate(value=float(value), low=low, high=high, n=n)


def intervals_separate(a: Estimate, b: Estimate, better: Better) -> bool:
    """True when ``a`` beats ``b`` and their intervals do not overlap.

    A conservative reading for the report's "clearly better" mark: non-overlapping 95%
    intervals imply a significant difference, while overlapping ones do not imply the reverse.
    """
    if better is Better.HIGHER:
        return a.low > b.high
    return a.high < b.low
