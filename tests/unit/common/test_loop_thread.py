"""One event loop on a thread for synchronous callers: results, errors, interruption, close."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

import pytest

from services.common.loop_thread import EventLoopThread


async def answer(value: int) -> int:
    await asyncio.sleep(0)
    return value


async def fail() -> None:
    raise KeyError("upstream")


def test_runs_coroutines_on_one_loop_and_passes_errors_back() -> None:
    loop = EventLoopThread("test-loop")
    try:
        assert loop.run(answer(3)) == 3
        first = loop.run(_current_loop())
        assert loop.run(_current_loop()) is first  # the same loop every call
        with pytest.raises(KeyError, match="upstream"):
            loop.run(fail())
    finally:
        loop.close()
    assert loop.closed
    loop.close()  # again: nothing to do


async def _current_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


class Interrupted(Exception):
    """What a Celery soft time limit raises in the waiting thread."""


def test_an_interrupted_wait_cancels_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = EventLoopThread("test-loop")
    started, cancelled = threading.Event(), threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    submit = loop.submit

    def interrupted_submit(coroutine: Coroutine[Any, Any, None]) -> Future[None]:
        future = submit(coroutine)

        def result(timeout: float | None = None) -> None:
            assert started.wait(5)
            raise Interrupted

        monkeypatch.setattr(future, "result", result)
        return future

    monkeypatch.setattr(loop, "submit", interrupted_submit)
    try:
        with pytest.raises(Interrupted):
            loop.run(slow())
        assert cancelled.wait(5)  # the call did not run on
    finally:
        loop.close()
