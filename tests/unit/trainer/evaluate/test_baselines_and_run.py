"""The baselines and the evaluation run on hand-made rows, with a scripted describer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from services.common.contracts import (
    Context,
    DescribeResponse,
    KpiLevel,
    KpiTarget,
    LevelDistribution,
    LikelihoodResponse,
    ModelInfo,
    Tone,
    Verbalization,
)
from services.common.errors import ModelOutputError
from services.common.verbalization import parse
from services.trainer.evaluate.baselines import BrandAveragePalette, NearestPastImage
from services.trainer.evaluate.results import ALL_BUCKETS
from services.trainer.evaluate.run import (
    BOIGLLM,
    EvaluationSettings,
    WrongModelServed,
    description_estimates,
    evaluate,
    select_rows,
)
from services.trainer.ingest.dataset import Direction, InstructionExample

RED = (
    "colors: red (200,20,30) 60%; white (250,250,250) 30%\ntones: warm, bright\n"
    "objects: circle 0.90 [0.10,0.10,0.50,0.50]"
)
BLUE = "colors: blue (20,40,200) 70%; black (10,10,10) 20%\ntones: cool, dark"
GREEN = (
    "colors: green (30,180,40) 50%\ntones: cool, bright\nobjects: square 0.80 [0.50,0.50,0.90,0.90]"
)


def example(
    id: str,
    account: str,
    text: str,
    level: KpiLevel,
    verbalization: str,
    *,
    day: int = 1,
    direction: Direction = Direction.CONTENT,
    percentile: float = 0.5,
) -> InstructionExample:
    return InstructionExample(
        direction=direction,
        id=id,
        context=Context(
            account=account, text=text, posted_at=datetime(2024, 1, day, 12, tzinfo=UTC)
        ),
        kpi_name="likes",
        level=level,
        percentile=percentile,
        too_few_posts=False,
        verbalization=verbalization,
    )


def bag_of_words(texts: list[str]) -> NDArray[np.float64]:
    """A deterministic stand-in for MiniLM: normalized word counts over a fixed vocabulary."""
    vocabulary = ["shoe", "shoes", "red", "run", "trail", "jacket", "blue", "sale", "new"]
    rows = np.array(
        [[text.lower().split().count(word) for word in vocabulary] for text in texts], float
    )
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def test_nearest_past_image_takes_the_closest_text_at_the_target_level() -> None:
    train = [
        example("a", "acme", "new red shoe", KpiLevel.HIGH, RED),
        example("b", "acme", "trail jacket sale", KpiLevel.HIGH, BLUE),
        example("c", "acme", "new red shoe", KpiLevel.LOW, GREEN),
        example("d", "other", "new red shoe", KpiLevel.HIGH, GREEN),
    ]
    retrieval = NearestPastImage(train, bag_of_words)
    queries = [
        example("q1", "acme", "red shoe run", KpiLevel.HIGH, BLUE),
        example("q2", "acme", "jacket sale", KpiLevel.HIGH, RED),
        example("q3", "acme", "red shoe", KpiLevel.LOW, RED),
        example("q4", "acme", "red shoe", KpiLevel.MEDIUM, RED),  # no medium post: nothing
    ]
    predicted = retrieval.predict(queries)
    assert predicted == [parse(RED), parse(BLUE), parse(GREEN), Verbalization()]


def test_nearest_past_image_breaks_ties_towards_the_latest_post() -> None:
    train = [
        example("late", "acme", "new shoe", KpiLevel.HIGH, BLUE, day=20),
        example("early", "acme", "new shoe", KpiLevel.HIGH, RED, day=2),
    ]
    [predicted] = NearestPastImage(train, bag_of_words).predict(
        [example("q", "acme", "new shoe", KpiLevel.HIGH, GREEN)]
    )
    assert predicted == parse(BLUE)


def test_brand_average_palette_finds_the_brands_colours_and_majority_tones() -> None:
    rng = np.random.default_rng(0)
    train = []
    for index in range(30):
        red = np.clip(np.array([200, 20, 30]) + rng.normal(0, 5, 3), 0, 255).astype(int)
        white = np.clip(np.array([250, 250, 250]) + rng.normal(0, 3, 3), 0, 255).astype(int)
        tones = "warm, bright" if index % 3 else "cool, bright"
        text = (
            f"colors: red ({red[0]},{red[1]},{red[2]}) 60%; "
            f"white ({white[0]},{white[1]},{white[2]}) 30%\ntones: {tones}"
        )
        train.append(example(f"t{index}", "acme", "post", KpiLevel.HIGH, text))
    [average] = BrandAveragePalette(train).predict(
        [example("q", "acme", "post", KpiLevel.LOW, RED)]
    )
    assert [color.name for color in average.colors] == ["red", "white"]
    assert np.allclose(average.colors[0].rgb, (200, 20, 30), atol=4)
    assert np.allclose(average.colors[1].rgb, (250, 250, 250), atol=4)
    assert abs(average.colors[0].coverage - 0.6) < 0.02
    assert average.tones == [Tone.WARM, Tone.BRIGHT]
    assert average.objects == []


def test_brand_average_at_level_averages_only_that_levels_posts() -> None:
    train = [example(f"h{i}", "acme", "post", KpiLevel.HIGH, RED) for i in range(5)]
    train += [example(f"l{i}", "acme", "post", KpiLevel.LOW, BLUE) for i in range(5)]
    model = BrandAveragePalette(train, by_level=True)
    high, low, medium = model.predict(
        [
            example("qh", "acme", "post", KpiLevel.HIGH, GREEN),
            example("ql", "acme", "post", KpiLevel.LOW, GREEN),
            example("qm", "acme", "post", KpiLevel.MEDIUM, GREEN),
        ]
    )
    assert model.name == "brand average at level"
    assert [c.name for c in high.colors] == ["red", "white"]
    assert [c.name for c in low.colors] == ["blue", "black"]
    assert medium == Verbalization()  # no past medium post


def test_select_rows_is_stratified_seeded_and_bounded() -> None:
    rows = [
        example(f"r{i}", "acme", "post", level, RED)
        for i, level in enumerate([KpiLevel.LOW] * 10 + [KpiLevel.MEDIUM] * 3 + [KpiLevel.HIGH] * 7)
    ]
    chosen = select_rows(rows, per_level=5, seed=1)
    levels = [row.level for row in chosen]
    assert levels.count(KpiLevel.LOW) == 5
    assert levels.count(KpiLevel.MEDIUM) == 3
    assert levels.count(KpiLevel.HIGH) == 5
    assert chosen == select_rows(rows, per_level=5, seed=1)
    assert chosen != select_rows(rows, per_level=5, seed=2)


def test_description_estimates_score_a_perfect_method_perfectly_per_bucket() -> None:
    rows = [
        example("h1", "acme", "post", KpiLevel.HIGH, RED),
        example("h2", "acme", "post", KpiLevel.HIGH, GREEN),
        example("l1", "acme", "post", KpiLevel.LOW, BLUE),
    ]
    truths = [parse(row.verbalization) for row in rows]
    estimates = description_estimates(
        rows,
        {"oracle": truths, "silent": [Verbalization()] * 3},
        EvaluationSettings(resamples=200),
        embed=None,
    )
    oracle = estimates["palette_rgb_distance"]["oracle"]
    assert oracle[ALL_BUCKETS] is not None and oracle[ALL_BUCKETS].value == 0.0
    assert oracle["high"] is not None and oracle["high"].n == 2
    assert oracle["medium"] is None  # no medium row
    iou = estimates["object_label_iou"]["silent"][ALL_BUCKETS]
    assert iou is not None and iou.value == 1 / 3  # only the object-less row is right
    assert all(bucket is None for bucket in estimates["caption_cosine"]["oracle"].values())


class ScriptedDescriber:
    """Describes every row with one text; level distributions follow the row's percentile."""

    def __init__(self, text: str, *, fail_ids: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.text = text
        self.fail_ids = fail_ids

    async def describe(self, context: Context, target: KpiTarget) -> DescribeResponse:
        if context.text in self.fail_ids:
            raise ModelOutputError("no readable colors")
        return DescribeResponse(
            verbalization=parse(self.text),
            text=self.text,
            repairs=[],
            model=ModelInfo(name="scripted", version="1"),
            prompt_version="test",
            cached=False,
        )

    async def likelihood(
        self, context: Context, verbalizations: list[Verbalization], *, kpi_name: str = "likes"
    ) -> LikelihoodResponse:
        high = float(context.text.split()[-1])  # the test writes the percentile into the text
        distribution = LevelDistribution(
            probabilities={
                KpiLevel.LOW: (1 - high) / 2,
                KpiLevel.MEDIUM: (1 - high) / 2,
                KpiLevel.HIGH: high,
            },
            expected_percentile=high,
        )
        return LikelihoodResponse(
            results=[distribution] * len(verbalizations),
            model=ModelInfo(name="scripted", version="1"),
            prompt_version="test",
        )


async def test_evaluate_scores_every_method_on_the_same_rows_and_keeps_failures() -> None:
    train = {
        Direction.CONTENT: [
            example(f"t{i}", "acme", "red shoe", level, RED)
            for i, level in enumerate(list(KpiLevel) * 4)
        ],
        Direction.BEHAVIOUR: [],
    }
    percentiles = {KpiLevel.LOW: 0.1, KpiLevel.MEDIUM: 0.5, KpiLevel.HIGH: 0.9}
    test = {
        direction: [
            example(
                f"x{i}",
                "acme",
                f"post {percentiles[level]}",
                level,
                RED,
                direction=direction,
                percentile=percentiles[level],
            )
            for i, level in enumerate(list(KpiLevel) * 3)
        ]
        for direction in Direction
    }
    embed: Any = bag_of_words
    result = await evaluate(
        train,
        test,
        boigllm=ScriptedDescriber(RED),  # type: ignore[arg-type]
        base=ScriptedDescriber(BLUE, fail_ids={"post 0.1"}),  # type: ignore[arg-type]
        settings=EvaluationSettings(rows_per_level=2, resamples=200, report_examples=2),
        media={},
        embed=embed,
        meta={"checkpoint": "test"},
    )
    assert result.methods[0] == BOIGLLM
    assert len(result.methods) == 5
    distance = result.description["palette_rgb_distance"]
    boig = distance[BOIGLLM][ALL_BUCKETS]
    base = distance["base model (few-shot)"][ALL_BUCKETS]
    assert boig is not None and boig.value == 0.0 and boig.n == 6
    # The base model's failed rows stay in, scored as the worst distance.
    assert base is not None and base.n == 6 and base.value > 200
    accuracy = result.behaviour["level_accuracy"][BOIGLLM]
    assert accuracy is not None and accuracy.n == 6
    spearman = result.behaviour["spearman"][BOIGLLM]
    assert spearman is not None and spearman.value == 1.0
    assert len(result.examples) == 2
    assert result.meta["content rows"] == "6"


async def test_evaluate_refuses_answers_from_another_model_than_the_checkpoint() -> None:
    rows = [example("x", "acme", "post 0.5", KpiLevel.HIGH, RED)]
    data = {Direction.CONTENT: rows, Direction.BEHAVIOUR: rows}
    with pytest.raises(WrongModelServed, match="not v9"):
        await evaluate(
            data,
            data,
            boigllm=ScriptedDescriber(RED),  # type: ignore[arg-type]
            base=None,
            settings=EvaluationSettings(resamples=10),
            media={},
            embed=bag_of_words,
            meta={},
            checkpoint_version="v9",
        )
