"""Micro-batching: requests that arrive while the model is busy run together as one batch.

A small LM on a CPU spends most of a decoding step reading its weights, so eight rows decode
in little more time than one; a describer serving several clients (or the evaluation, which
keeps several requests in flight) gets that throughput without any client batching by hand.
Nothing waits for a batch to fill: the first request runs at once, and whatever queued
behind it forms the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """Collects submitted items and runs them through ``run_batch`` at most ``max_batch`` at
    a time, in arrival order, with at most ``concurrency`` batches running at once (1: one
    batch after another; more where the model serves concurrent calls itself, as vLLM does).

    ``run_batch`` returns one result per item, in order. If it raises, every item of that
    batch gets the exception; later batches still run. An item whose caller has gone away
    (cancelled) before its batch starts is dropped: nobody waits for its answer.
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        max_batch: int,
        concurrency: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._running: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Items submitted and not yet taken into a batch."""
        return len(self._pending)

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        # On the next turn of the loop: items submitted in this one join the same batch.
        asyncio.get_running_loop().call_soon(self._start_batches)
        return await future

    def _start_batches(self) -> None:
        while self._pending and len(self._running) < self._concurrency:
            taken, self._pending = (
                self._pending[: self._max_batch],
                self._pending[self._max_batch :],
            )
            batch = [(item, future) for item, future in taken if not future.done()]
            if not batch:
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start_batches()

    async def _run(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        # A caller may have gone away between taking the batch and its start.
        batch = [(item, future) for item, future in batch if not future.done()]
        if not batch:
            return
        try:
            results = await self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as exc:  # every caller of the batch hears of it, typed as raised
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
