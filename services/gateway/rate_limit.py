"""Per-API-key rate limits with the ``limits`` library (memory or Redis counters).

The synchronous ``limits`` API is used from a worker thread rather than its asyncio API:
the async Redis client binds to one event loop, while the sync one works from any thread,
and the in-memory storage needs no loop at all.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter
from starlette.concurrency import run_in_threadpool

from services.common import metrics
from services.common.errors import Overloaded, RateLimited
from services.gateway.auth import ApiKeyDep, ApiKeyInfo

logger = logging.getLogger(__name__)

_REDIS_TIMEOUT_SECONDS = 2.0
"""A Redis that does not answer within this is treated as down (see fail_open)."""


class KeyRateLimiter:
    """Counts requests per key identity and refuses those over any configured limit."""

    def __init__(
        self,
        limit: str,
        storage_url: str,
        *,
        strategy: str = "moving-window",
        key_prefix: str = "boig_gateway",
        fail_open: bool = True,
    ) -> None:
        self.limit = limit
        self._items: list[RateLimitItem] = parse_many(limit)
        self.storage: Storage = _storage(storage_url, key_prefix)
        self._limiter: RateLimiter = (
            MovingWindowRateLimiter(self.storage)
            if strategy == "moving-window"
            else FixedWindowRateLimiter(self.storage)
        )
        self._fail_open = fail_open

    def check(self, identity: str) -> None:
        """Count one request for ``identity``; RateLimited (with retry_after) when over a limit.

        Blocking (Redis round trips): call it from a worker thread.
        """
        try:
            for item in self._items:
                if not self._limiter.hit(item, identity):
                    reset_at = self._limiter.get_window_stats(item, identity).reset_time
                    # Whole seconds, rounded up: a client that waits Retry-After gets through.
                    retry_after = max(1, math.ceil(reset_at - time.time()))
                    metrics.RATE_LIMITED.inc()
                    raise RateLimited(
                        f"rate limit of {item} exceeded for this API key; retry in {retry_after} s",
                        retry_after=retry_after,
                    )
        except StorageError as exc:
            if not self._fail_open:
                raise Overloaded("rate limit storage is unavailable") from exc
            logger.warning("rate limit storage unavailable, letting the request through: %s", exc)

    def reset(self) -> None:
        """Forget every counter (for tests and operators)."""
        self.storage.reset()


def _storage(url: str, key_prefix: str) -> Storage:
    options: dict[str, Any] = {}
    if urlsplit(url).scheme.startswith("redis"):
        options = {
            "key_prefix": key_prefix,
            "socket_timeout": _REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": _REDIS_TIMEOUT_SECONDS,
        }
    # wrap_exceptions turns every backend's own errors into limits' StorageError.
    storage = storage_from_string(url, wrap_exceptions=True, **options)
    assert isinstance(storage, Storage)  # the sync storages; async ones need an async+ scheme
    return storage


async def enforce_rate_limit(request: Request, key: ApiKeyDep) -> ApiKeyInfo:
    """Authenticate, then count the request against the key's limit."""
    limiter: KeyRateLimiter = request.app.state.rate_limiter
    # The identity is the public prefix: the secret never leaves the auth module.
    await run_in_threadpool(limiter.check, key.prefix)
    return key


RateLimitedKey = Annotated[ApiKeyInfo, Depends(enforce_rate_limit)]
