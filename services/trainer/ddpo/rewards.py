"""Rewards for DDPO: the scorer's (through its HTTP API) or any function in-process.

A reward is *submitted* per sampled batch and collected at the end of the epoch, so the
scorer works on one batch while the trainer samples the next.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol, TypeVar

import httpx
import numpy as np
import torch
from PIL import Image

from services.common.clients import ScorerClient, call_with_retries
from services.common.contracts import Creative, KpiLevel, KpiTarget, RewardName, ScoreRequest
from services.common.images import encode_png
from services.common.loop_thread import EventLoopThread
from services.trainer.ddpo.tasks import Task

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Reward(Protocol):
    def submit(self, images: torch.Tensor, tasks: Sequence[Task]) -> Future[np.ndarray]:
        """Start scoring ``images`` (B, 3, H, W) in [0, 1], drawn for ``tasks``."""
        ...


class InProcessReward:
    """A plain function as a reward (tests, probes, local rewards)."""

    def __init__(self, score: Callable[[torch.Tensor, Sequence[Task]], np.ndarray]) -> None:
        self._score = score

    def submit(self, images: torch.Tensor, tasks: Sequence[Task]) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        try:
            future.set_result(np.asarray(self._score(images, tasks), dtype=np.float64))
        except Exception as exc:
            future.set_exception(exc)
        return future


class MixedReward:
    """A weighted sum of rewards, e.g. a KPI reward plus a faithfulness term that keeps the
    image showing what its prompt says. Each part is submitted for the same batch at once (the
    scorer works on them concurrently); the sum resolves when every part has."""

    def __init__(self, parts: Sequence[tuple[float, Reward]]) -> None:
        if not parts:
            raise ValueError("a mixture needs at least one reward")
        self._parts = list(parts)

    def submit(self, images: torch.Tensor, tasks: Sequence[Task]) -> Future[np.ndarray]:
        pending = [(weight, reward.submit(images, tasks)) for weight, reward in self._parts]
        combined: Future[np.ndarray] = Future()
        lock = threading.Lock()

        def settle(_: Future[np.ndarray]) -> None:
            with lock:
                if combined.done() or not all(future.done() for _, future in pending):
                    return
                try:
                    total = sum(weight * future.result() for weight, future in pending)
                    combined.set_result(np.asarray(total, dtype=np.float64))
                except Exception as exc:
                    combined.set_exception(exc)

        for _, future in pending:
            future.add_done_callback(settle)
        return combined

    def close(self) -> None:
        for _, reward in self._parts:
            close = getattr(reward, "close", None)
            if close is not None:
                close()


class ScorerReward:
    """The scorer's reward (match, likelihood, contrastive) at a KPI level, one /score call
    per context in the batch, on an event loop of its own so that it overlaps with sampling.

    An overloaded or unreachable scorer is retried ``retries`` times with backoff, then the
    epoch fails: a missing reward must not be read as zero.
    """

    def __init__(
        self,
        scorer_url: str,
        *,
        reward: RewardName = "match",
        level: KpiLevel = KpiLevel.HIGH,
        kpi_name: str = "likes",
        timeout: float = 300.0,
        retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._reward: RewardName = reward
        self._target = KpiTarget(name=kpi_name, level=level)
        self._retries = retries
        self._loop = EventLoopThread("ddpo-reward")
        self._client = self._loop.run(_make_client(scorer_url, timeout, transport))

    def submit(self, images: torch.Tensor, tasks: Sequence[Task]) -> Future[np.ndarray]:
        pngs = [_png(image) for image in images]
        return self._loop.submit(self._score(pngs, list(tasks)))

    def close(self) -> None:
        self._loop.run(self._client.aclose())
        self._loop.close()

    async def _score(self, pngs: list[bytes], tasks: list[Task]) -> np.ndarray:
        groups: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            groups.setdefault(task.context.model_dump_json(), []).append(index)
        rewards = np.empty(len(tasks), dtype=np.float64)
        answers = await asyncio.gather(
            *(self._score_group(pngs, tasks, indices) for indices in groups.values())
        )
        for indices, totals in zip(groups.values(), answers, strict=True):
            rewards[indices] = totals
        return rewards

    async def _score_group(
        self, pngs: list[bytes], tasks: list[Task], indices: list[int]
    ) -> list[float]:
        request = ScoreRequest(
            context=tasks[indices[0]].context,
            target=self._target,
            reward=self._reward,
            creatives=[Creative(id=f"i{i}", data=pngs[i]) for i in indices],
        )
        response = await call_with_retries(
            lambda: self._client.score(request), retries=self._retries, what="scorer"
        )
        totals = {result.id: result.total for result in response.results}
        return [totals[f"i{i}"] for i in indices]


async def _make_client(
    url: str, seconds: float, transport: httpx.AsyncBaseTransport | None
) -> ScorerClient:
    # Made on the reward's own loop: an httpx client belongs to the loop it first runs on.
    return ScorerClient(url, timeout=seconds, transport=transport)


def _png(image: torch.Tensor) -> bytes:
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return encode_png(Image.fromarray(array))
