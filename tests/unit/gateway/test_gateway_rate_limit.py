"""Per-key rate limits: 429 with a usable Retry-After, per-key isolation, storage failures."""

from __future__ import annotations

import secrets
import time

import pytest

from services.common import metrics
from services.common.errors import Overloaded, RateLimited
from services.gateway.rate_limit import KeyRateLimiter, rate_limit_storage


def rate_limited_total(kind: str = "requests") -> float:
    value = metrics.REGISTRY.get_sample_value("boig_rate_limited_total", {"limit": kind})
    return value or 0.0


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
def test_over_the_limit_is_429_with_retry_after(strategy: str) -> None:
    limiter = KeyRateLimiter("3/minute", "memory://", strategy=strategy)
    before = rate_limited_total()
    for _ in range(3):
        limiter.check("aaaa1111")
    with pytest.raises(RateLimited) as refused:
        limiter.check("aaaa1111")
    error = refused.value
    assert error.status_code == 429
    assert error.retry_after is not None and 1 <= error.retry_after <= 60
    assert error.retry_after == int(error.retry_after)  # whole seconds, rounded up
    assert "3 per 1 minute" in error.message
    assert rate_limited_total() == before + 1


def test_keys_are_limited_separately() -> None:
    limiter = KeyRateLimiter("1/minute", "memory://")
    limiter.check("key-a")
    limiter.check("key-b")
    with pytest.raises(RateLimited):
        limiter.check("key-a")


def test_every_limit_of_a_compound_rule_holds() -> None:
    limiter = KeyRateLimiter("5/minute;2/second", "memory://")
    limiter.check("k")
    limiter.check("k")
    with pytest.raises(RateLimited) as refused:
        limiter.check("k")
    assert refused.value.retry_after == 1


def test_the_window_frees_after_retry_after() -> None:
    limiter = KeyRateLimiter("1/second", "memory://")
    limiter.check("k")
    with pytest.raises(RateLimited) as refused:
        limiter.check("k")
    assert refused.value.retry_after == 1
    time.sleep(1.05)
    limiter.check("k")


def test_limits_with_different_kinds_count_apart_on_one_storage() -> None:
    storage = rate_limit_storage("memory://", "test")
    requests = KeyRateLimiter("1/minute", storage)
    polls = KeyRateLimiter("1/minute", storage, kind="polls", subject="polls")
    requests.check("k")
    polls.check("k")
    before = rate_limited_total("polls")
    with pytest.raises(RateLimited) as refused:
        polls.check("k")
    assert "for polls" in refused.value.message
    assert rate_limited_total("polls") == before + 1


def test_count_then_check_without_counting() -> None:
    failures = KeyRateLimiter("2/minute", "memory://", kind="auth_failures")
    failures.check_without_counting("10.0.0.1")  # checking alone never uses the budget
    failures.check_without_counting("10.0.0.1")
    failures.check_without_counting("10.0.0.1")
    failures.count("10.0.0.1")
    failures.count("10.0.0.1")
    failures.count("10.0.0.1")  # counting never refuses; the next check does
    with pytest.raises(RateLimited):
        failures.check_without_counting("10.0.0.1")
    failures.check_without_counting("10.0.0.2")


def test_unreachable_storage_fails_closed_by_default() -> None:
    with pytest.raises(Overloaded):
        KeyRateLimiter("1/minute", "redis://127.0.0.1:1").check("k")


def test_unreachable_storage_fails_open_or_closed_as_configured() -> None:
    # Port 1 refuses connections at once, so this costs no timeout.
    open_limiter = KeyRateLimiter("1/minute", "redis://127.0.0.1:1", fail_open=True)
    open_limiter.check("k")
    open_limiter.check("k")
    closed = KeyRateLimiter("1/minute", "redis://127.0.0.1:1", fail_open=False)
    with pytest.raises(Overloaded):
        closed.check("k")


@pytest.mark.redis
@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
def test_redis_counters_are_shared_between_gateway_replicas(redis_url: str, strategy: str) -> None:
    prefix = f"boig_test_{secrets.token_hex(4)}"
    replicas = [
        KeyRateLimiter("3/minute", redis_url, strategy=strategy, key_prefix=prefix)
        for _ in range(2)
    ]
    try:
        replicas[0].check("k")
        replicas[1].check("k")
        replicas[0].check("k")
        with pytest.raises(RateLimited) as refused:
            replicas[1].check("k")
        assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 60
        replicas[1].check("other-key")
    finally:
        replicas[0].reset()
    replicas[1].check("k")  # reset removed this run's counters
    replicas[0].reset()
