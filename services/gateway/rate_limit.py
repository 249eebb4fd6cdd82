"""Rate limits with the ``limits`` library (memory or Redis counters): requests per API key,
polls per API key, and failed authentications per client address.

The synchronous ``limits`` API is used from a worker thread rather than its asyncio API:
the async Redis client binds to one event loop, while the sync one works from any thread,
and the in-memory storage needs no loop at all.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter
from starlette.concurrency import run_in_threadpool

from services.common import metrics
from services.common.errors import Overloaded, RateLimited, Unauthorized
from services.gateway.auth import (
    ApiKeyInfo,
    api_key_header_scheme,
    bearer_scheme,
    require_api_key,
    split_key,
)

logger = logging.getLogger(__name__)

_REDIS_TIMEOUT_SECONDS = 2.0
"""A Redis that does not answer within this is treated as down (see fail_open)."""


class KeyRateLimiter:
    """Counts events per identity and refuses those over any configured limit.

    ``kind`` names the limit in messages and metrics and keeps its counters apart from other
    limiters' on the same storage; ``subject`` says in messages what is counted.
    """

    def __init__(
        self,
        limit: str,
        storage: Storage | str,
        *,
        strategy: str = "moving-window",
        key_prefix: str = "boig_gateway",
        fail_open: bool = False,
        kind: str = "requests",
        subject: str = "requests with this API key",
    ) -> None:
        self.limit = limit
        self.kind = kind
        self._subject = subject
        self._items: list[RateLimitItem] = parse_many(limit)
        self.storage: Storage = (
            storage if isinstance(storage, Storage) else rate_limit_storage(storage, key_prefix)
        )
        self._limiter: RateLimiter = (
            MovingWindowRateLimiter(self.storage)
            if strategy == "moving-window"
            else FixedWindowRateLimiter(self.storage)
        )
        self._fail_open = fail_open

    def check(self, identity: str) -> None:
        """Count one event for ``identity``; RateLimited (with retry_after) when over a limit.

        Blocking (Redis round trips): call it from a worker thread.
        """
        with self._storage_guard():
            for item in self._items:
                if not self._limiter.hit(item, self.kind, identity):
                    self._refuse(item, identity)

    def check_without_counting(self, identity: str) -> None:
        """RateLimited when ``identity`` has already used up a limit; counts nothing."""
        with self._storage_guard():
            for item in self._items:
                if not self._limiter.test(item, self.kind, identity):
                    self._refuse(item, identity)

    def count(self, identity: str) -> None:
        """Count one event for ``identity`` without refusing anything (the next check will)."""
        with self._storage_guard():
            for item in self._items:
                self._limiter.hit(item, self.kind, identity)

    def _refuse(self, item: RateLimitItem, identity: str) -> None:
        reset_at = self._limiter.get_window_stats(item, self.kind, identity).reset_time
        # Whole seconds, rounded up: a client that waits Retry-After gets through.
        retry_after = max(1, math.ceil(reset_at - time.time()))
        metrics.RATE_LIMITED.labels(self.kind).inc()
        raise RateLimited(
            f"rate limit of {item} exceeded for {self._subject}; retry in {retry_after} s",
            retry_after=retry_after,
        )

    @contextmanager
    def _storage_guard(self) -> Iterator[None]:
        try:
            yield
        except StorageError as exc:
            if not self._fail_open:
                raise Overloaded("rate limit storage is unavailable") from exc
            logger.warning("rate limit storage unavailable, letting the request through: %s", exc)

    def reset(self) -> None:
        """Forget every counter (for tests and operators)."""
        self.storage.reset()


def rate_limit_storage(url: str, key_prefix: str) -> Storage:
    """One counter store (memory or Redis with timeouts) that several limiters can share."""
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


def client_address(request: Request) -> str:
    """The caller's address as uvicorn saw it (behind a proxy: X-Forwarded-For from the
    addresses in FORWARDED_ALLOW_IPS, which is uvicorn's own rule)."""
    return request.client.host if request.client is not None else "unknown"


def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header_key: Annotated[str | None, Depends(api_key_header_scheme)],
) -> ApiKeyInfo:
    """Authenticate the caller, refusing before any lookup a client address that failed too
    often: per (address, key prefix), so that guessing one key's secret stops without locking
    out the address's other users, and, more loosely, per address alone, so that guessing
    across prefixes stops too. Sync on purpose: FastAPI runs it in a worker thread."""
    address = client_address(request)
    presented = bearer.credentials if bearer is not None else header_key
    parts = split_key(presented.strip()) if presented else None
    prefix = parts[0] if parts is not None else "-"
    limits = [
        (request.app.state.auth_failure_limiter, f"{address}|{prefix}"),
        (request.app.state.auth_failure_address_limiter, address),
    ]
    for limiter, identity in limits:
        limiter.check_without_counting(identity)
    try:
        return require_api_key(request, bearer, header_key)
    except Unauthorized:
        for limiter, identity in limits:
            limiter.count(identity)
        raise


AuthenticatedKey = Annotated[ApiKeyInfo, Depends(authenticate)]


async def enforce_rate_limit(request: Request, key: AuthenticatedKey) -> ApiKeyInfo:
    """Authenticate, then count the request against the key's limit."""
    limiter: KeyRateLimiter = request.app.state.rate_limiter
    # The identity is the public prefix: the secret never leaves the auth module.
    await run_in_threadpool(limiter.check, key.prefix)
    return key


async def enforce_poll_limit(request: Request, key: AuthenticatedKey) -> ApiKeyInfo:
    """Authenticate, then count the read against the key's polling limit (job states, images)."""
    limiter: KeyRateLimiter = request.app.state.poll_rate_limiter
    await run_in_threadpool(limiter.check, key.prefix)
    return key


RateLimitedKey = Annotated[ApiKeyInfo, Depends(enforce_rate_limit)]
PollLimitedKey = Annotated[ApiKeyInfo, Depends(enforce_poll_limit)]
