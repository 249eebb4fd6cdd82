"""An asyncio event loop on a thread of its own, for synchronous code that calls async clients.

A Celery task or a training loop is synchronous; ``asyncio.run`` per call would build a new
loop, and so a new HTTP connection pool, every time. One loop for the owner's life keeps the
clients (and their keep-alive connections) that live on it, and lets work overlap with the
caller (the DDPO reward is computed while the next batch is sampled).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """Runs coroutines on one loop in a daemon thread; safe to call from any thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``coroutine`` on the loop; its result or exception arrives in the future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result (or raise its exception); an
        interrupted wait (a Celery soft time limit) cancels the coroutine, as asyncio.run would."""
        future = self.submit(coroutine)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        """Stop the loop and its thread; call once nothing runs on it any more."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
