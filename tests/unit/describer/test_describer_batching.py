"""Micro-batching: requests that queue while the model is busy decode together, each answer
goes to its own caller, failures reach every caller of their batch, abandoned work is dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.common.contracts import Context, KpiLevel, KpiTarget
from services.describer.batching import MicroBatcher
from services.describer.service import Describer
from services.describer.settings import DescriberSettings


class Recorder:
    """A run_batch that holds each batch until released, and records the batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on: int | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"item {self.fail_on} is bad")
        return [item * 10 for item in items]


async def test_items_queued_behind_a_running_batch_run_together_in_order() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=8)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # the first batch starts at once, alone
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    assert batcher.waiting == 3

    recorder.release.set()

    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_a_queue_longer_than_the_batch_limit_is_split() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher = MicroBatcher(recorder, max_batch=2)

    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    assert results == [0, 10, 20, 30, 40]
    assert all(len(batch) <= 2 for batch in recorder.batches)
    assert [item for batch in recorder.batches for item in batch] == list(range(5))


async def test_a_failed_batch_fails_its_callers_only() -> None:
    recorder = Recorder()
    recorder.fail_on = 2
    batcher = MicroBatcher(recorder, max_batch=2)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    recorder.release.set()

    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert recorder.batches == [[1, 2], [3]]
    assert [type(r).__name__ for r in results[:2]] == ["ValueError", "ValueError"]
    assert results[2] == 30


async def test_work_nobody_waits_for_is_dropped_before_it_runs() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=8)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    abandoned = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    abandoned.cancel()
    recorder.release.set()

    assert await first == 10
    assert await kept == 30
    assert recorder.batches == [[1], [3]]


def test_a_batch_limit_below_one_is_refused() -> None:
    async def run(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(run, max_batch=0)


class LevelEchoBackend:
    """Colours by the level its prompt asks for, so a mixed-up batch would show."""

    def __init__(self, fake_backend: Any) -> None:
        self.inner = fake_backend()
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, prompts: list[str], **options: Any) -> list[str]:
        self.batch_sizes.append(len(prompts))
        answers = []
        for prompt in prompts:
            key = prompt.rsplit("\n", 1)[-1]
            high = prompt.rsplit("goal: ", 1)[-1].startswith("high")
            answers.append(
                (" gold (230,190,40) 60%" if high else " gray (120,120,120) 60%")
                if key == "colors:"
                else self.inner.lines.get(key.removesuffix(":"), "")
            )
        return answers


async def describe_at_once(
    backend: LevelEchoBackend, batch_size: int, context: Context, levels: list[KpiLevel]
) -> list[str]:
    """First colour of each description, for requests sent all at once, one account each."""
    settings = DescriberSettings(
        model_path=Path("/nonexistent"), describe_batch_size=batch_size, palette_samples=1
    )
    describer = Describer(backend, settings)  # type: ignore[arg-type]
    responses = await asyncio.gather(
        *(
            describer.describe(
                context=context.model_copy(update={"account": f"brand{index}"}),
                target=KpiTarget(level=level),
            )
            for index, level in enumerate(levels)
        )
    )
    return [response.verbalization.colors[0].name for response in responses]


async def test_concurrent_describes_decode_as_one_batch_and_keep_their_own_answers(
    fake_backend: Any, context: Context
) -> None:
    backend = LevelEchoBackend(fake_backend)
    levels = [KpiLevel.HIGH, KpiLevel.LOW, KpiLevel.HIGH, KpiLevel.MEDIUM]

    names = await describe_at_once(backend, 8, context, levels)

    assert names == ["gold", "gray", "gold", "gray"]
    fields = 4  # caption, colors, tones, objects
    # All four arrived before the model was free: one batch, one model call per field.
    assert backend.batch_sizes == [4] * fields


async def test_batch_size_one_decodes_requests_one_at_a_time(
    fake_backend: Any, context: Context
) -> None:
    backend = LevelEchoBackend(fake_backend)

    names = await describe_at_once(backend, 1, context, [KpiLevel.HIGH, KpiLevel.LOW])

    assert names == ["gold", "gray"]
    assert set(backend.batch_sizes) == {1}


async def test_with_concurrency_batches_run_side_by_side_in_arrival_order() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=2, concurrency=2)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    # Two batches started without waiting for each other; the rest queue behind them.
    assert recorder.batches == [[0, 1], [2, 3]]
    assert batcher.waiting == 1

    recorder.release.set()

    assert await asyncio.gather(*tasks) == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1], [2, 3], [4]]
