"""The baselines and the evaluation run on hand-made rows, with a scripted describer."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress

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
from services.trainer.evaluate.baselines import (
    BrandAveragePalette,
    BrandLevelPrior,
    MajorityLevel,
    NearestPastImage,
)
from services.trainer.evaluate.metrics import MAX_RGB_DISTANCE, Prediction
from services.trainer.evaluate.report import print_report
from services.trainer.evaluate.results import ALL_BUCKETS, FAILED_DESCRIPTION
from services.trainer.evaluate.run import (
    BASE_MODEL,
    BOIGLLM,
    EvaluationSettings,
    OtherConfiguration,
    WrongModelServed,
    behaviour_estimates,
    describe_all,
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
        example("q4", "acme", "red shoe", KpiLevel.MEDIUM, RED),  # no medium post: failure
    ]
    predicted = retrieval.predict(queries)
    assert predicted == [parse(RED), parse(BLUE), parse(GREEN), None]


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
    assert average is not None
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
    assert high is not None and low is not None
    assert [c.name for c in high.colors] == ["red", "white"]
    assert [c.name for c in low.colors] == ["blue", "black"]
    assert medium is None  # no past medium post: a failure, not an empty image


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
    truths: list[Prediction] = [parse(row.verbalization) for row in rows]
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


CIRCLE_ONLY = "objects: circle 0.90 [0.00,0.00,1.00,1.00]"


def test_description_estimates_score_failed_rows_worst_and_keep_them_in() -> None:
    rows = [
        example("h1", "acme", "post", KpiLevel.HIGH, RED),
        example("l1", "acme", "post", KpiLevel.LOW, BLUE),  # no objects in the truth
        example("m1", "acme", "post", KpiLevel.MEDIUM, CIRCLE_ONLY),  # no colours or tones
    ]
    estimates = description_estimates(
        rows, {"failed": [None, None, None]}, EvaluationSettings(resamples=50), embed=None
    )

    def value(metric: str) -> tuple[float, int]:
        estimate = estimates[metric]["failed"][ALL_BUCKETS]
        assert estimate is not None
        return estimate.value, estimate.n

    assert value("object_label_iou") == (0.0, 3)  # empty-vs-empty would have been 1.0
    assert value("matched_box_iou") == (0.0, 3)
    assert value("palette_rgb_distance") == (MAX_RGB_DISTANCE, 2)  # m1 has no colours
    assert value("coverage_rmse") == (1.0, 2)
    assert value("tone_agreement") == (0.0, 2)


def behaviour_row(id: str, account: str, level: KpiLevel, percentile: float) -> InstructionExample:
    return example(
        id, account, "post", level, RED, direction=Direction.BEHAVIOUR, percentile=percentile
    )


# acme: low 0.2, 0.4, 0.3 and high 0.95 -> smoothed (3+1, 0+1, 1+1) / 7 = 4/7, 1/7, 2/7.
# beta: medium 0.7, 0.8 -> smoothed (1, 3, 1) / 5.
# Mean percentile per level: low 0.3, medium 0.75, high 0.95.
# Global frequencies (3, 2, 1) / 6.
BEHAVIOUR_TRAIN = [
    behaviour_row("a1", "acme", KpiLevel.LOW, 0.2),
    behaviour_row("a2", "acme", KpiLevel.LOW, 0.4),
    behaviour_row("a3", "acme", KpiLevel.LOW, 0.3),
    behaviour_row("a4", "acme", KpiLevel.HIGH, 0.95),
    behaviour_row("b1", "beta", KpiLevel.MEDIUM, 0.7),
    behaviour_row("b2", "beta", KpiLevel.MEDIUM, 0.8),
]
ACME_SCORE = (4 * 0.3 + 1 * 0.75 + 2 * 0.95) / 7
BETA_SCORE = (1 * 0.3 + 3 * 0.75 + 1 * 0.95) / 5
UNSEEN_SCORE = (3 * 0.3 + 2 * 0.75 + 1 * 0.95) / 6


def test_majority_level_predicts_the_most_frequent_training_level() -> None:
    queries = [
        behaviour_row("q1", "acme", KpiLevel.LOW, 0.1),
        behaviour_row("q2", "beta", KpiLevel.MEDIUM, 0.7),
        behaviour_row("q3", "gamma", KpiLevel.LOW, 0.5),
        behaviour_row("q4", "acme", KpiLevel.HIGH, 0.99),
    ]
    predicted = MajorityLevel(BEHAVIOUR_TRAIN).predict(queries)
    assert predicted.levels == [KpiLevel.LOW] * 4
    assert predicted.scores == pytest.approx([(0.2 + 0.4 + 0.3 + 0.95 + 0.7 + 0.8) / 6] * 4)
    estimates = behaviour_estimates(
        queries, {"majority class": predicted}, EvaluationSettings(resamples=50)
    )
    accuracy = estimates["level_accuracy"]["majority class"]
    assert accuracy is not None and accuracy.value == 0.5 and accuracy.n == 4  # q1 and q3
    assert estimates["spearman"]["majority class"] is None  # constant score


def test_brand_level_prior_predicts_the_brands_level_and_expected_kpi() -> None:
    prior = BrandLevelPrior(BEHAVIOUR_TRAIN)
    assert prior.frequencies("acme") == pytest.approx(
        {KpiLevel.LOW: 4 / 7, KpiLevel.MEDIUM: 1 / 7, KpiLevel.HIGH: 2 / 7}
    )
    assert prior.frequencies("gamma") == pytest.approx(
        {KpiLevel.LOW: 3 / 6, KpiLevel.MEDIUM: 2 / 6, KpiLevel.HIGH: 1 / 6}
    )
    predicted = prior.predict(
        [
            behaviour_row("q1", "acme", KpiLevel.LOW, 0.2),
            behaviour_row("q2", "beta", KpiLevel.HIGH, 0.9),
            behaviour_row("q3", "gamma", KpiLevel.MEDIUM, 0.6),
        ]
    )
    assert predicted.levels == [KpiLevel.LOW, KpiLevel.MEDIUM, KpiLevel.LOW]
    assert predicted.scores == pytest.approx([ACME_SCORE, BETA_SCORE, UNSEEN_SCORE])


def test_brand_level_prior_ranks_accounts_so_spearman_is_defined() -> None:
    # Scores: acme 0.550 < gamma 0.558 < beta 0.700; true KPIs in the same order.
    queries = [
        behaviour_row("q1", "acme", KpiLevel.LOW, 0.1),
        behaviour_row("q2", "acme", KpiLevel.LOW, 0.2),
        behaviour_row("q3", "gamma", KpiLevel.MEDIUM, 0.6),
        behaviour_row("q4", "beta", KpiLevel.MEDIUM, 0.7),
        behaviour_row("q5", "beta", KpiLevel.HIGH, 0.9),
    ]
    predicted = BrandLevelPrior(BEHAVIOUR_TRAIN).predict(queries)
    estimates = behaviour_estimates(queries, {"prior": predicted}, EvaluationSettings(resamples=50))
    spearman = estimates["spearman"]["prior"]
    accuracy = estimates["level_accuracy"]["prior"]
    # Ranks of the scores (1.5, 1.5, 3, 4.5, 4.5) against (1, 2, 3, 4, 5): deviations
    # (-1.5, -1.5, 0, 1.5, 1.5) and (-2, -1, 0, 1, 2), so rho = 9 / sqrt(9 * 10).
    assert spearman is not None and spearman.value == pytest.approx(9 / math.sqrt(90))
    assert accuracy is not None and accuracy.value == pytest.approx(3 / 5)  # q1, q2, q4


def test_behaviour_baselines_refuse_an_empty_training_split() -> None:
    with pytest.raises(ValueError, match="at least one training row"):
        MajorityLevel([])
    with pytest.raises(ValueError, match="at least one training row"):
        BrandLevelPrior([])


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


PERCENTILES = {KpiLevel.LOW: 0.1, KpiLevel.MEDIUM: 0.5, KpiLevel.HIGH: 0.9}


class SlowDescriber(ScriptedDescriber):
    """Answers later rows sooner, and records how many requests it held at once."""

    def __init__(self, texts: dict[str, str]) -> None:
        super().__init__(RED)
        self.texts = texts
        self.open = 0
        self.most_open = 0

    async def describe(self, context: Context, target: KpiTarget) -> DescribeResponse:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        await asyncio.sleep(0.01 * (10 - int(context.text.split()[-1])))
        self.open -= 1
        self.text = self.texts[context.text]
        return await super().describe(context, target)


async def test_describe_all_keeps_the_row_order_with_requests_in_flight() -> None:
    rows = [example(f"r{i}", "acme", f"post {i}", KpiLevel.LOW, RED) for i in range(10)]
    texts = {row.context.text: (RED if i % 2 else BLUE) for i, row in enumerate(rows)}
    describer = SlowDescriber(texts)

    with Progress(disable=True) as progress:
        described = await describe_all(
            describer,  # type: ignore[arg-type]
            rows,
            progress,
            "scripted",
            in_flight=4,
        )

    assert [d is not None and d.colors[0].name for d in described] == [
        parse(texts[row.context.text]).colors[0].name for row in rows
    ]
    assert describer.most_open == 4  # never more than asked, and really concurrent


Split = dict[Direction, list[InstructionExample]]


def small_split() -> tuple[Split, Split]:
    """(train, test): 12 red training posts without behaviour rows; 3 test rows per level."""
    train = {
        Direction.CONTENT: [
            example(f"t{i}", "acme", "red shoe", level, RED)
            for i, level in enumerate(list(KpiLevel) * 4)
        ],
        Direction.BEHAVIOUR: [],
    }
    test = {
        direction: [
            example(
                f"x{i}",
                "acme",
                f"post {PERCENTILES[level]}",
                level,
                RED,
                direction=direction,
                percentile=PERCENTILES[level],
            )
            for i, level in enumerate(list(KpiLevel) * 3)
        ]
        for direction in Direction
    }
    return train, test


async def test_evaluate_scores_every_method_on_the_same_rows_and_keeps_failures() -> None:
    train, test = small_split()
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
    assert result.description_failures == {
        BOIGLLM: 0,
        BASE_MODEL: 2,  # the two low rows
        "nearest past image": 0,
        "brand average palette": 0,
        "brand average at level": 0,
    }
    first = result.examples[0]  # rows come grouped by level, low first
    assert first.level == "low" and first.predictions[BASE_MODEL] == FAILED_DESCRIPTION
    # No behaviour rows in training: only the models predict levels.
    assert set(result.behaviour["level_accuracy"]) == {BOIGLLM, BASE_MODEL}


class DescribeOnly(ScriptedDescriber):
    async def likelihood(
        self, context: Context, verbalizations: list[Verbalization], *, kpi_name: str = "likes"
    ) -> LikelihoodResponse:
        raise AssertionError("a decoding-only configuration is never asked for levels")


async def test_a_decoding_only_configuration_is_scored_on_its_descriptions_alone() -> None:
    train, test = small_split()
    embed: Any = bag_of_words
    greedy = OtherConfiguration(DescribeOnly(BLUE), expect_version=None, behaviour=False)  # type: ignore[arg-type]

    result = await evaluate(
        train,
        test,
        boigllm=ScriptedDescriber(RED),  # type: ignore[arg-type]
        base=None,
        settings=EvaluationSettings(rows_per_level=2, resamples=200, report_examples=2),
        media={},
        embed=embed,
        meta={"checkpoint": "test"},
        others={"greedy": greedy},
    )

    distance = result.description["palette_rgb_distance"]["greedy"][ALL_BUCKETS]
    assert distance is not None and distance.value > 200 and distance.n == 6
    assert set(result.behaviour["level_accuracy"]) == {BOIGLLM}


def behaviour_split(
    accounts_levels: list[tuple[str, KpiLevel]], prefix: str
) -> list[InstructionExample]:
    return [
        example(
            f"{prefix}{i}",
            account,
            f"post {PERCENTILES[level]}",
            level,
            RED,
            direction=Direction.BEHAVIOUR,
            percentile=PERCENTILES[level],
        )
        for i, (account, level) in enumerate(accounts_levels)
    ]


async def test_evaluate_scores_the_behaviour_baselines_and_reports_them() -> None:
    # Training: acme is mostly low, beta mostly high; low is the majority overall (3 of 5).
    train_rows = behaviour_split(
        [
            ("acme", KpiLevel.LOW),
            ("acme", KpiLevel.LOW),
            ("acme", KpiLevel.LOW),
            ("beta", KpiLevel.HIGH),
            ("beta", KpiLevel.HIGH),
        ],
        "t",
    )
    # Test: two low acme rows, one medium row per account, two high beta rows.
    test_rows = behaviour_split(
        [
            ("acme", KpiLevel.LOW),
            ("acme", KpiLevel.LOW),
            ("acme", KpiLevel.MEDIUM),
            ("beta", KpiLevel.MEDIUM),
            ("beta", KpiLevel.HIGH),
            ("beta", KpiLevel.HIGH),
        ],
        "x",
    )
    content = [example("c", "acme", "post 0.5", KpiLevel.LOW, RED)]
    result = await evaluate(
        {Direction.CONTENT: content, Direction.BEHAVIOUR: train_rows},
        {Direction.CONTENT: content, Direction.BEHAVIOUR: test_rows},
        boigllm=ScriptedDescriber(RED),  # type: ignore[arg-type]
        base=None,
        settings=EvaluationSettings(resamples=100, report_examples=1),
        media={},
        embed=bag_of_words,
        meta={},
    )

    accuracy = result.behaviour["level_accuracy"]
    spearman = result.behaviour["spearman"]
    majority, prior = accuracy["majority class"], accuracy["brand level prior"]
    assert majority is not None and majority.value == pytest.approx(2 / 6)  # the low rows
    assert prior is not None and prior.value == pytest.approx(4 / 6)  # low acme, high beta
    assert spearman["majority class"] is None
    # The prior ranks every acme row (score 0.26) below every beta row (0.7): ranks
    # (2, 2, 2, 5, 5, 5) against the KPIs' (1.5, 1.5, 3.5, 3.5, 5.5, 5.5); deviations
    # (-1.5 x3, 1.5 x3) and (-2, -2, 0, 0, 2, 2), so rho = 12 / sqrt(13.5 * 16).
    prior_rho = spearman["brand level prior"]
    assert prior_rho is not None and prior_rho.value == pytest.approx(12 / math.sqrt(13.5 * 16))
    assert "majority class" not in result.methods  # no description columns for them

    console = Console(record=True, width=240)
    print_report(result, console=console)
    text = console.export_text()
    behaviour_table = text[text.index("Behaviour metrics") :]
    assert "majority class" in behaviour_table and "brand level prior" in behaviour_table
    assert "nearest past image" not in behaviour_table
    assert "failed descriptions of 1 rows" in text


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
