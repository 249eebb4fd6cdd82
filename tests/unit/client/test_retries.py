"""boig_client.retries: which failures are sent again, after how long, and when not."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from boig_client.errors import UpstreamError
from boig_client.retries import Attempts, RetryPolicy, retry_after_seconds

REQUEST = httpx.Request("GET", "http://gateway/v1/jobs/j1")


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=REQUEST)


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    policy = RetryPolicy(backoff_seconds=0.5, max_backoff_seconds=3.0)
    rng = random.Random(0)
    for retry, cap in enumerate((0.5, 1.0, 2.0, 3.0, 3.0)):
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert cap / 2 <= min(delays) and max(delays) <= cap
        assert max(delays) - min(delays) > cap / 4  # jittered, not one fixed value


@pytest.mark.parametrize("status", [429, 503])
def test_refusals_are_retried_after_the_retry_after_they_name(status: int) -> None:
    policy = RetryPolicy()
    delay = policy.delay_after_response(answer(status, **{"Retry-After": "7"}), 0, random.Random())
    assert delay is not None and 7 <= delay <= 7.7


@pytest.mark.parametrize("status", [200, 400, 401, 404, 409, 422, 500, 502, 504])
def test_other_answers_are_not_retried(status: int) -> None:
    assert RetryPolicy().delay_after_response(answer(status), 0, random.Random()) is None


def test_a_refusal_without_retry_after_backs_off() -> None:
    policy = RetryPolicy(backoff_seconds=1.0)
    delay = policy.delay_after_response(answer(503), 2, random.Random())
    assert delay is not None and 2.0 <= delay <= 4.0


def test_a_retry_after_beyond_the_longest_wait_is_not_waited_for() -> None:
    policy = RetryPolicy(max_wait_seconds=30)
    assert (
        policy.delay_after_response(answer(429, **{"Retry-After": "31"}), 0, random.Random())
        is None
    )
    assert policy.delay_after_response(answer(429, **{"Retry-After": "30"}), 0, random.Random())


def test_retries_stop_at_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.delay_after_response(answer(429), 1, random.Random()) is not None
    assert policy.delay_after_response(answer(429), 2, random.Random()) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": "12"})) == 12
    assert retry_after_seconds(httpx.Headers({"Retry-After": " 1.5 "})) == 1.5
    when = datetime.now(UTC) + timedelta(seconds=90)
    seconds = retry_after_seconds(
        httpx.Headers({"Retry-After": format_datetime(when, usegmt=True)})
    )
    assert seconds is not None and 85 <= seconds <= 90
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(httpx.Headers({"Retry-After": past})) == 0
    for unreadable in ("soon", "nan", "inf", ""):
        assert retry_after_seconds(httpx.Headers({"Retry-After": unreadable})) is None
    assert retry_after_seconds(httpx.Headers()) is None


def test_a_request_that_never_left_is_retried_even_when_not_replayable() -> None:
    policy = RetryPolicy()
    for error in (
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.PoolTimeout(""),
    ):
        assert policy.delay_after_error(error, replayable=False, retry=0, rng=random.Random())


def test_a_request_that_may_have_arrived_is_retried_only_when_replayable() -> None:
    policy = RetryPolicy()
    for error in (
        httpx.ReadTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("closed"),
    ):
        assert policy.delay_after_error(error, replayable=True, retry=0, rng=random.Random())
        assert (
            policy.delay_after_error(error, replayable=False, retry=0, rng=random.Random()) is None
        )


def test_configuration_errors_are_not_retried() -> None:
    policy = RetryPolicy()
    error = httpx.UnsupportedProtocol("ftp://")
    assert policy.delay_after_error(error, replayable=True, retry=0, rng=random.Random()) is None


def test_attempts_count_retries_and_give_up_with_an_upstream_error() -> None:
    attempts = Attempts(
        RetryPolicy(max_retries=1), replayable=True, rng=random.Random(), what="GET /v1/jobs/j1"
    )
    assert attempts.after_response(answer(503)) is not None
    assert attempts.retries == 1
    with pytest.raises(UpstreamError, match=r"GET /v1/jobs/j1 failed after 2 attempts") as raised:
        attempts.after_error(httpx.ConnectError("connection refused"))
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_retries": -1},
        {"backoff_seconds": -0.1},
        {"max_backoff_seconds": float("inf")},
        {"max_wait_seconds": float("nan")},
    ],
)
def test_a_policy_refuses_numbers_that_make_no_sense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]
