"""DDPO's rewards and tasks: the scorer's API per context, retries, and training contexts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import pytest
import torch
from fastapi import Depends, FastAPI
from PIL import Image
from pydantic import ValidationError

from services.common import wire
from services.common.app import create_service_app
from services.common.clients import DescriberClient
from services.common.contracts import (
    ColorSwatch,
    Context,
    CreativeScore,
    DescribeRequest,
    DescribeResponse,
    KpiLevel,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
    Verbalization,
)
from services.common.errors import InvalidInput, Overloaded
from services.trainer.ddpo.job import BoigsdJob
from services.trainer.ddpo.rewards import InProcessReward, MixedReward, ScorerReward
from services.trainer.ddpo.tasks import Task, build_tasks, training_contexts

MODEL = ModelInfo(name="stand-in", version="1")


def scorer_app(requests: list[ScoreRequest], overloaded_first: int = 0) -> FastAPI:
    app = create_service_app(service="scorer", version="0", max_body_bytes=1 << 24)
    refusals = [overloaded_first]

    @app.post("/score")
    async def score(
        request: Annotated[ScoreRequest, Depends(wire.body_reader(ScoreRequest))],
    ) -> ScoreResponse:
        if refusals[0]:
            refusals[0] -= 1
            raise Overloaded("busy", retry_after=0.01)
        requests.append(request)
        results = []
        for rank, creative in enumerate(request.creatives, start=1):
            pixels = Image.open(io.BytesIO(creative.data))
            red = float(np.asarray(pixels)[..., 0].mean()) / 255
            results.append(
                CreativeScore(
                    id=creative.id,
                    rank=rank,
                    total=red,
                    breakdown={},
                    verbalization=Verbalization(),
                )
            )
        return ScoreResponse(
            reward=request.reward, weights={}, targets=[], results=results, models={}
        )

    return app


def images(*reds: float) -> torch.Tensor:
    batch = torch.zeros(len(reds), 3, 16, 16)
    for index, red in enumerate(reds):
        batch[index, 0] = red
    return batch


def test_the_scorer_scores_each_context_once_and_answers_in_order() -> None:
    seen: list[ScoreRequest] = []
    reward = ScorerReward(
        "http://scorer", transport=httpx.ASGITransport(app=scorer_app(seen, overloaded_first=1))
    )
    acme, globex = Context(account="acme"), Context(account="globex")
    tasks = [
        Task(key="a", prompt="p", context=acme),
        Task(key="b", prompt="q", context=globex),
        Task(key="a", prompt="p", context=acme),
    ]
    try:
        rewards = reward.submit(images(0.2, 0.6, 1.0), tasks).result(timeout=30)
    finally:
        reward.close()
    np.testing.assert_allclose(rewards, [0.2, 0.6, 1.0], atol=1 / 255)
    assert sorted(len(request.creatives) for request in seen) == [1, 2]
    assert all(request.target.level is KpiLevel.HIGH for request in seen)


def test_a_scorer_that_stays_overloaded_fails_the_reward_rather_than_guessing() -> None:
    reward = ScorerReward(
        "http://scorer",
        retries=2,
        transport=httpx.ASGITransport(app=scorer_app([], overloaded_first=10)),
    )
    try:
        future = reward.submit(
            images(0.5), [Task(key="a", prompt="p", context=Context(account="a"))]
        )
        with pytest.raises(Overloaded):
            future.result(timeout=30)
    finally:
        reward.close()


def test_an_in_process_reward_passes_its_failure_on() -> None:
    def broken(_: torch.Tensor, __: object) -> np.ndarray:
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        InProcessReward(broken).submit(images(0.1), []).result()


def test_a_mixture_weighs_its_parts_and_fails_when_one_does() -> None:
    def bright(batch: torch.Tensor, _: object) -> np.ndarray:
        return batch.mean(dim=(1, 2, 3)).double().numpy()

    def constant(batch: torch.Tensor, _: object) -> np.ndarray:
        return np.full(batch.shape[0], 10.0)

    def broken(_: torch.Tensor, __: object) -> np.ndarray:
        raise InvalidInput("no")

    mixed = MixedReward([(0.75, InProcessReward(bright)), (0.25, InProcessReward(constant))])
    assert mixed.submit(images(0.2), []).result() == pytest.approx([0.75 * 0.2 / 3 + 2.5])
    failing = MixedReward([(0.5, InProcessReward(bright)), (0.5, InProcessReward(broken))])
    with pytest.raises(InvalidInput):
        failing.submit(images(0.2), []).result()


def test_a_faithfulness_term_needs_a_reward_other_than_match() -> None:
    assert BoigsdJob(reward="likelihood", faithfulness=0.3).faithfulness == 0.3
    with pytest.raises(ValidationError, match="faithfulness already"):
        BoigsdJob(reward="match", faithfulness=0.3)


def write_dataset(version_dir: Path) -> None:
    rows = [
        {"context": {"account": account, "text": f"post {i}"}}
        for account in ("acme", "globex")
        for i in range(5)
    ]
    (version_dir / "content").mkdir(parents=True)
    (version_dir / "content" / "train.jsonl").write_text(
        "\n".join(json.dumps(row) for row in rows) + "\n"
    )
    (version_dir / "content" / "test.jsonl").write_text(
        json.dumps({"context": {"account": "held-out", "text": "never"}}) + "\n"
    )


def test_training_contexts_cover_every_account_and_never_the_test_split(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    contexts = training_contexts(tmp_path, limit=4, seed=1)
    assert sorted(c.account for c in contexts) == ["acme", "acme", "globex", "globex"]
    assert training_contexts(tmp_path, limit=4, seed=1) == contexts
    assert len(training_contexts(tmp_path, limit=100)) == 10


async def test_tasks_take_their_prompt_from_the_high_level_description() -> None:
    app = create_service_app(service="describer", version="0", max_body_bytes=1 << 20)
    asked: list[DescribeRequest] = []
    busy = [1]  # the first answer is a 503: the task waits it out

    @app.post("/describe")
    async def describe(request: DescribeRequest) -> DescribeResponse:
        if busy[0]:
            busy[0] -= 1
            raise Overloaded("busy", retry_after=0.01)
        asked.append(request)
        swatch = ColorSwatch(name="teal", rgb=(0, 128, 128), coverage=0.8)
        return DescribeResponse(
            verbalization=Verbalization(colors=[swatch]),
            text="colors: teal",
            repairs=[],
            model=MODEL,
            prompt_version="p",
            cached=False,
        )

    async with DescriberClient("http://d", transport=httpx.ASGITransport(app=app)) as client:
        tasks = await build_tasks([Context(account="acme", text="Summer sale")], client)
    assert [task.key for task in tasks] == ["acme-0"]
    assert "Summer sale" in tasks[0].prompt and "teal" in tasks[0].prompt
    assert asked[0].target.level is KpiLevel.HIGH
