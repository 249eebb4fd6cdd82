"""When a call is sent again: after a 429 or 503 (the gateway did nothing) and after a transport
failure, with exponential backoff and jitter, or after the gateway's ``Retry-After``."""

from __future__ import annotations

import email.utils
import logging
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from boig_client.errors import UpstreamError

logger = logging.getLogger("boig_client")

RETRYABLE_STATUSES = frozenset({429, 503})
"""Refusals that mean the gateway did nothing: rate limited, or overloaded (a full queue, a
model loading). Sending the same request again later is safe for any call."""

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport failures before any byte of the request left: safe to send again for any call."""
_OUTCOME_UNKNOWN = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport failures after the request may have arrived: safe to send again only when a
second delivery has the effect of one (``Call.replayable``)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a client retries one call.

    The n-th retry (n = 0, 1, ...) waits between half and all of
    ``min(max_backoff_seconds, backoff_seconds * 2**n)`` (exponential backoff with "equal
    jitter": it always grows, and clients refused together do not come back together), or, when
    the answer names a ``Retry-After``, that long plus up to 10% more. A ``Retry-After`` longer
    than ``max_wait_seconds`` is not waited for: the typed error is raised at once, with its
    ``retry_after``, for the caller to decide.
    """

    max_retries: int = 3
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    max_wait_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        for name in ("backoff_seconds", "max_backoff_seconds", "max_wait_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (0-based) when the gateway named none."""
        cap = min(self.max_backoff_seconds, self.backoff_seconds * 2.0**retry)
        return cap / 2 + rng.uniform(0, cap / 2)

    def delay_after_response(
        self, response: httpx.Response, retry: int, rng: random.Random
    ) -> float | None:
        """Seconds to wait before sending again after ``response``; None: do not."""
        if response.status_code not in RETRYABLE_STATUSES or retry >= self.max_retries:
            return None
        asked = retry_after_seconds(response.headers)
        if asked is None:
            return self.backoff(retry, rng)
        if asked > self.max_wait_seconds:
            return None
        return asked + rng.uniform(0, asked / 10)

    def delay_after_error(
        self, error: httpx.TransportError, *, replayable: bool, retry: int, rng: random.Random
    ) -> float | None:
        """Seconds to wait before sending again after ``error``; None: do not."""
        if retry >= self.max_retries:
            return None
        if isinstance(error, _NOT_SENT) or (replayable and isinstance(error, _OUTCOME_UNKNOWN)):
            return self.backoff(retry, rng)
        return None


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """The ``Retry-After`` header in seconds from now (RFC 9110: seconds or an HTTP date);
    None when it is missing or unreadable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class Attempts:
    """One call's retries: how long to wait before the next send, or that there is none.

    The sync and the async client share it; they differ only in how they send and sleep.
    """

    def __init__(
        self, policy: RetryPolicy, *, replayable: bool, rng: random.Random, what: str
    ) -> None:
        self._policy = policy
        self._replayable = replayable
        self._rng = rng
        self._what = what
        self.retries = 0

    def after_response(self, response: httpx.Response) -> float | None:
        """Seconds to wait before the next send, or None when ``response`` is the answer."""
        delay = self._policy.delay_after_response(response, self.retries, self._rng)
        if delay is not None:
            self._count(delay, f"{response.status_code} {response.reason_phrase}")
        return delay

    def after_error(self, error: httpx.TransportError) -> float:
        """Seconds to wait before the next send; raises UpstreamError when there is none."""
        delay = self._policy.delay_after_error(
            error, replayable=self._replayable, retry=self.retries, rng=self._rng
        )
        if delay is None:
            tries = self.retries + 1
            raise UpstreamError(
                f"{self._what} failed after {tries} attempt{'s' if tries > 1 else ''}: "
                f"{type(error).__name__}: {error or 'no answer'}"
            ) from error
        self._count(delay, type(error).__name__)
        return delay

    def _count(self, delay: float, cause: str) -> None:
        self.retries += 1
        logger.info(
            "%s: %s; retry %d of %d in %.2f s",
            self._what,
            cause,
            self.retries,
            self._policy.max_retries,
            delay,
        )
