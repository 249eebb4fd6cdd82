"""KPI normalization per account (design §4): percentiles within the account, then buckets.

Raw KPIs are not comparable across brands (a big brand's flop out-likes a small brand's
hit), so every value is turned into its percentile among the same account's posts
(optionally the same account-year, to absorb platform drift) before it is bucketed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.contracts import KPI_LEVELS, KpiLevel


class KpiBuckets(BaseModel):
    """Cut points on the within-account percentile: low < 0.6 ≤ medium < 0.9 ≤ high by default."""

    model_config = ConfigDict(frozen=True)

    cut_points: tuple[float, float] = Field(default=(0.6, 0.9))
    min_posts: int = Field(default=20, ge=1, description="Accounts with fewer posts are flagged.")
    by_year: bool = Field(default=False, description="Rank within account x year, not account.")

    @model_validator(mode="after")
    def _increasing(self) -> KpiBuckets:
        low, high = self.cut_points
        if not 0.0 < low < high < 1.0:
            raise ValueError("cut points must satisfy 0 < low < high < 1")
        return self

    def level(self, percentile: float) -> KpiLevel:
        low, high = self.cut_points
        if percentile < low:
            return KpiLevel.LOW
        if percentile < high:
            return KpiLevel.MEDIUM
        return KpiLevel.HIGH

    def midpoints(self) -> dict[KpiLevel, float]:
        """The centre of each bucket on the percentile scale."""
        edges = (0.0, *self.cut_points, 1.0)
        return {level: (edges[i] + edges[i + 1]) / 2 for i, level in enumerate(KPI_LEVELS)}


@dataclass(frozen=True)
class KpiObservation:
    account: str
    value: float
    posted_at: datetime | None = None


@dataclass(frozen=True)
class NormalizedKpi:
    percentile: float
    level: KpiLevel
    group_size: int
    too_few_posts: bool


def normalize_kpis(
    observations: Sequence[KpiObservation], buckets: KpiBuckets | None = None
) -> list[NormalizedKpi]:
    """Mid-rank percentile of each value within its group, in input order.

    Ties share the same percentile, so a brand whose posts all got 10 likes has every post
    at 0.5 rather than an arbitrary order deciding which one was a "hit".
    """
    buckets = buckets or KpiBuckets()
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, obs in enumerate(observations):
        if not np.isfinite(obs.value) or obs.value < 0:
            raise ValueError(f"observation {index}: KPI must be a finite non-negative number")
        if buckets.by_year and obs.posted_at is None:
            raise ValueError(f"observation {index}: by_year needs posted_at")
        key: Hashable = (
            (obs.account, obs.posted_at.year) if buckets.by_year and obs.posted_at else obs.account
        )
        groups[key].append(index)
    result: list[NormalizedKpi | None] = [None] * len(observations)
    for indices in groups.values():
        values = np.array([observations[i].value for i in indices], dtype=float)
        ordered = np.sort(values)
        below = np.searchsorted(ordered, values, side="left")
        at_or_below = np.searchsorted(ordered, values, side="right")
        percentiles = (below + 0.5 * (at_or_below - below)) / len(values)
        flagged = len(values) < buckets.min_posts
        for i, pct in zip(indices, percentiles, strict=True):
            result[i] = NormalizedKpi(
                percentile=float(pct),
                level=buckets.level(float(pct)),
                group_size=len(values),
                too_few_posts=flagged,
            )
    return [item for item in result if item is not None]
