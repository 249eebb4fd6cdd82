"""KPI normalization per account: percentiles, buckets, flags."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.contracts import KpiLevel
from services.trainer.ingest.kpi import KpiBuckets, KpiObservation, normalize_kpis


def test_percentiles_are_within_each_account() -> None:
    big = [KpiObservation("big", v) for v in (1000, 2000, 3000, 4000)]
    small = [KpiObservation("small", v) for v in (1, 2, 3, 4)]
    result = normalize_kpis(big + small, KpiBuckets(min_posts=1))
    assert [r.percentile for r in result[:4]] == [r.percentile for r in result[4:]]
    assert [r.percentile for r in result[:4]] == [0.125, 0.375, 0.625, 0.875]


def test_default_buckets_low_medium_high() -> None:
    obs = [KpiObservation("acme", float(v)) for v in range(100)]
    levels = [r.level for r in normalize_kpis(obs)]
    assert levels.count(KpiLevel.LOW) == 60
    assert levels.count(KpiLevel.MEDIUM) == 30
    assert levels.count(KpiLevel.HIGH) == 10


def test_ties_share_one_percentile() -> None:
    result = normalize_kpis([KpiObservation("a", 10.0)] * 5, KpiBuckets(min_posts=1))
    assert {r.percentile for r in result} == {0.5}


def test_configurable_cut_points_and_few_posts_flag() -> None:
    buckets = KpiBuckets(cut_points=(0.5, 0.75), min_posts=10)
    result = normalize_kpis([KpiObservation("a", float(v)) for v in range(4)], buckets)
    assert [r.level.value for r in result] == ["low", "low", "medium", "high"]
    assert all(r.too_few_posts for r in result)
    assert buckets.midpoints() == {KpiLevel.LOW: 0.25, KpiLevel.MEDIUM: 0.625, KpiLevel.HIGH: 0.875}


def test_by_year_ranks_within_account_year() -> None:
    obs = [
        KpiObservation("a", 10, datetime(2015, 1, 1)),
        KpiObservation("a", 20, datetime(2015, 6, 1)),
        KpiObservation("a", 1000, datetime(2024, 1, 1)),
        KpiObservation("a", 2000, datetime(2024, 6, 1)),
    ]
    result = normalize_kpis(obs, KpiBuckets(by_year=True, min_posts=1))
    assert [r.percentile for r in result] == [0.25, 0.75, 0.25, 0.75]


@pytest.mark.parametrize("cuts", [(0.9, 0.6), (0.0, 0.5), (0.5, 1.0)])
def test_bad_cut_points_are_refused(cuts: tuple[float, float]) -> None:
    with pytest.raises(ValidationError):
        KpiBuckets(cut_points=cuts)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_values_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="observation 1"):
        normalize_kpis([KpiObservation("a", 1.0), KpiObservation("a", value)])


@given(st.lists(st.floats(min_value=0, max_value=1e9, allow_nan=False), min_size=1, max_size=50))
def test_percentiles_are_monotonic_and_in_range(values: list[float]) -> None:
    result = normalize_kpis([KpiObservation("a", v) for v in values])
    for v1, r1 in zip(values, result, strict=True):
        assert 0 < r1.percentile < 1
        for v2, r2 in zip(values, result, strict=True):
            if v1 < v2:
                assert r1.percentile < r2.percentile
