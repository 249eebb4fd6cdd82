"""A finished job's records as a worker writes them, for the tests of the job store and of
the routes that read it."""

from __future__ import annotations

from services.common.contracts import JobOutcome, ModelInfo
from services.common.jobs import NewImage


def outcome() -> JobOutcome:
    return JobOutcome(
        strategy="prompt",
        width=64,
        height=64,
        steps=4,
        seed=7,
        candidates=2,
        target_description="colors: red 50%",
        prompt="summer sale, mostly red",
        negative_prompt=None,
        reward="match",
        models={"diffusion": ModelInfo(name="tiny-sd", version="abc")},
    )


def images(count: int = 2) -> list[NewImage]:
    return [
        NewImage(
            rank=rank,
            seed=7 + rank,
            width=64,
            height=64,
            artifact_key=f"generated/{str(rank) * 64}.png",
            sha256=str(rank) * 64,
            reward=0.5 / rank,
            breakdown={"colors": 0.5},
        )
        for rank in range(1, count + 1)
    ]
