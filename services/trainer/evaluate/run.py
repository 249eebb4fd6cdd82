"""One evaluation: held-out rows -> every method's descriptions and level predictions ->
metrics per row -> bootstrap estimates per KPI bucket.

BoigLLM and the base model are evaluated as they are served: through a describer's HTTP API
(one serving the published checkpoint, one serving no checkpoint), so the numbers include the
prompt, decoding and repair that users get. The baselines run in-process from the training
split. A description a method fails to give is kept as None and scored worst on every
description metric (see metrics.py), and counted in the result.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich.progress import Progress

from services.common.clients import DescriberClient
from services.common.contracts import KPI_LEVELS, KpiLevel, KpiTarget, ModelInfo
from services.common.errors import BoigError
from services.common.verbalization import parse, render
from services.trainer.evaluate import metrics
from services.trainer.evaluate.baselines import (
    BrandAveragePalette,
    BrandLevelPrior,
    Embed,
    MajorityLevel,
    NearestPastImage,
)
from services.trainer.evaluate.bootstrap import bootstrap_mean, bootstrap_statistic
from services.trainer.evaluate.metrics import DescriptionMetric, Prediction
from services.trainer.evaluate.results import (
    ALL_BUCKETS,
    BEHAVIOUR_METRICS,
    BUCKETS,
    DESCRIPTION_METRICS,
    FAILED_DESCRIPTION,
    Estimate,
    EvaluationResult,
    ExampleRow,
    LevelPredictions,
)
from services.trainer.ingest.dataset import Direction, InstructionExample

logger = logging.getLogger(__name__)

BOIGLLM = "BoigLLM"
BASE_MODEL = "base model (few-shot)"
BOIGLLM_WITHOUT_RETRIEVAL = "BoigLLM without history"
BOIGLLM_SAMPLED_COLORS = "BoigLLM, 4 sampled colors lines"


@dataclass(frozen=True)
class OtherConfiguration:
    """One more served configuration to evaluate next to BoigLLM."""

    client: DescriberClient
    expect_version: str | None
    """The checkpoint version every answer must come from (None: any)."""
    behaviour: bool = True
    """Also read levels. A configuration that differs from BoigLLM only in how it decodes
    descriptions reads levels exactly as BoigLLM does: asking again would only cost time."""


@dataclass(frozen=True)
class EvaluationSettings:
    rows_per_level: int = 20
    """Held-out rows drawn per KPI level (stratified, seeded); all of a level if fewer. With
    20, `make eval-llm` took 11.6 min on 2 cores, base model and never-trained account
    included (world v3 seed 1); the report states each interval's width."""
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    report_examples: int = 6
    in_flight: int = 8
    """Describe requests kept open per served model: the describer decodes the ones that
    queue as one batch (micro-batching), which is where a CPU's throughput comes from."""


def select_rows(
    examples: Sequence[InstructionExample], per_level: int, seed: int
) -> list[InstructionExample]:
    """Up to ``per_level`` rows of each KPI level, drawn without replacement by the seed, so
    every bucket's interval rests on a comparable number of rows."""
    rng = random.Random(seed)
    chosen: list[InstructionExample] = []
    for level in KPI_LEVELS:
        pool = [example for example in examples if example.level is level]
        chosen.extend(rng.sample(pool, min(per_level, len(pool))))
    return chosen


class WrongModelServed(RuntimeError):
    """The describer answered with another model than the one under evaluation (e.g. it
    refused the checkpoint and fell back to the base model)."""


def _check_model(model: ModelInfo, expect_version: str | None, label: str) -> None:
    if expect_version is not None and expect_version not in model.version:
        raise WrongModelServed(
            f"{label} was answered by {model.name} {model.version}, not {expect_version}"
        )


async def describe_all(
    client: DescriberClient,
    rows: Sequence[InstructionExample],
    progress: Progress,
    label: str,
    expect_version: str | None = None,
    in_flight: int = 1,
    repairs: Counter[str] | None = None,
) -> list[Prediction]:
    """The describer's description for each row's (context, level), ``in_flight`` requests
    at a time. A row the describer cannot describe (unreadable model output, an error
    answer) is None, not an empty description: an empty one is a claim ("no objects") that
    can score well, a failure scores the worst on every metric rather than vanishing from
    the average. ``repairs[label]`` counts the descriptions the describer had to repair."""
    task = progress.add_task(f"{label}: describe", total=len(rows))
    slots = asyncio.Semaphore(in_flight)

    async def describe(row: InstructionExample) -> Prediction:
        async with slots:
            try:
                response = await client.describe(
                    row.context, KpiTarget(name=row.kpi_name, level=row.level)
                )
                _check_model(response.model, expect_version, label)
                if repairs is not None and response.repairs:
                    repairs[label] += 1
                return response.verbalization
            except BoigError as exc:
                logger.warning("%s could not describe %s: %s", label, row.id, exc)
                return None
            finally:
                progress.advance(task)

    results = list(await asyncio.gather(*(describe(row) for row in rows)))
    failures = sum(result is None for result in results)
    if failures:
        logger.warning("%s: %d of %d descriptions failed", label, failures, len(rows))
    return results


async def predict_levels(
    client: DescriberClient,
    rows: Sequence[InstructionExample],
    progress: Progress,
    label: str,
    expect_version: str | None = None,
) -> LevelPredictions:
    """Behaviour simulation on each row's real image description."""
    task = progress.add_task(f"{label}: levels", total=len(rows))
    levels: list[KpiLevel] = []
    scores: list[float] = []
    for row in rows:
        response = await client.likelihood(
            row.context, [parse(row.verbalization)], kpi_name=row.kpi_name
        )
        _check_model(response.model, expect_version, label)
        [distribution] = response.results
        levels.append(max(distribution.probabilities, key=distribution.probabilities.__getitem__))
        scores.append(distribution.expected_percentile)
        progress.advance(task)
    return LevelPredictions(levels=levels, scores=scores)


def description_estimates(
    rows: Sequence[InstructionExample],
    predictions: dict[str, list[Prediction]],
    settings: EvaluationSettings,
    embed: Embed | None,
) -> dict[str, dict[str, dict[str, Estimate | None]]]:
    """metric -> method -> bucket -> estimate; each method is scored on the same rows, a
    failed row (None) at the metric's worst value."""
    truths = [parse(row.verbalization) for row in rows]
    buckets: dict[str, list[int]] = {bucket: [] for bucket in BUCKETS}
    for index, row in enumerate(rows):
        buckets[ALL_BUCKETS].append(index)
        buckets[row.level.value].append(index)
    functions: dict[str, DescriptionMetric] = dict(metrics.DESCRIPTION_METRIC_FUNCTIONS)
    if embed is not None:
        functions["caption_cosine"] = lambda p, t: metrics.caption_cosine(p, t, embed)
    result: dict[str, dict[str, dict[str, Estimate | None]]] = {}
    for spec in DESCRIPTION_METRICS:
        function = functions.get(spec.key)
        result[spec.key] = {}
        for method, predicted in predictions.items():
            values = (
                [function(p, t) for p, t in zip(predicted, truths, strict=True)]
                if function is not None
                else [None] * len(rows)
            )
            result[spec.key][method] = {
                bucket: bootstrap_mean(
                    [values[i] for i in indices],
                    confidence=settings.confidence,
                    resamples=settings.resamples,
                    seed=settings.seed,
                )
                for bucket, indices in buckets.items()
            }
    return result


def behaviour_estimates(
    rows: Sequence[InstructionExample],
    predictions: dict[str, LevelPredictions],
    settings: EvaluationSettings,
) -> dict[str, dict[str, Estimate | None]]:
    truth_levels = [row.level.value for row in rows]
    truth_scores = [row.percentile for row in rows]
    result: dict[str, dict[str, Estimate | None]] = {spec.key: {} for spec in BEHAVIOUR_METRICS}
    for method, predicted in predictions.items():
        hits = [float(p.value == t) for p, t in zip(predicted.levels, truth_levels, strict=True)]
        result["level_accuracy"][method] = bootstrap_mean(
            hits,
            confidence=settings.confidence,
            resamples=settings.resamples,
            seed=settings.seed,
        )
        scores = predicted.scores

        def spearman_at(indices: NDArray[np.intp], scores: list[float] = scores) -> float | None:
            return metrics.spearman(
                [scores[i] for i in indices], [truth_scores[i] for i in indices]
            )

        result["spearman"][method] = bootstrap_statistic(
            len(rows),
            spearman_at,
            confidence=settings.confidence,
            resamples=settings.resamples,
            seed=settings.seed,
        )
    return result


def description_failures(predictions: dict[str, list[Prediction]]) -> dict[str, int]:
    """Method -> how many rows it gave no description for."""
    return {method: sum(p is None for p in predicted) for method, predicted in predictions.items()}


def _shown(prediction: Prediction) -> str:
    return FAILED_DESCRIPTION if prediction is None else render(prediction)


def example_rows(
    rows: Sequence[InstructionExample],
    predictions: dict[str, list[Prediction]],
    media: dict[str, Path],
    count: int,
) -> tuple[ExampleRow, ...]:
    """The first ``count`` rows, spread over the levels (rows come grouped by level)."""
    if count <= 0 or not rows:
        return ()
    step = max(1, len(rows) // count)
    picked = list(range(0, len(rows), step))[:count]
    return tuple(
        ExampleRow(
            id=rows[i].id,
            account=rows[i].context.account,
            level=rows[i].level.value,
            text=rows[i].context.text,
            image_path=media.get(rows[i].id),
            truth=rows[i].verbalization,
            predictions={method: _shown(values[i]) for method, values in predictions.items()},
        )
        for i in picked
    )


def behaviour_baselines(
    train: Sequence[InstructionExample], rows: Sequence[InstructionExample]
) -> dict[str, LevelPredictions]:
    """The behaviour baselines' predictions for ``rows``, built from the training split's
    behaviour rows; none when there are no such rows (logged: the table then lacks them)."""
    if not train:
        logger.warning("no behaviour rows in the training split: no behaviour baselines")
        return {}
    baselines = (MajorityLevel(train), BrandLevelPrior(train))
    return {baseline.name: baseline.predict(rows) for baseline in baselines}


async def evaluate(
    train: dict[Direction, list[InstructionExample]],
    test: dict[Direction, list[InstructionExample]],
    *,
    boigllm: DescriberClient,
    base: DescriberClient | None,
    settings: EvaluationSettings,
    media: dict[str, Path],
    embed: Embed,
    meta: dict[str, str],
    checkpoint_version: str | None = None,
    others: Mapping[str, OtherConfiguration] | None = None,
) -> EvaluationResult:
    """Score BoigLLM and the baselines on the same held-out rows; every BoigLLM answer must
    come from ``checkpoint_version`` when one is given. ``others``: more served
    configurations (label -> client and the checkpoint version it must answer with), such as
    BoigLLM without its history lines."""
    content_rows = select_rows(test[Direction.CONTENT], settings.rows_per_level, settings.seed)
    behaviour_rows = select_rows(test[Direction.BEHAVIOUR], settings.rows_per_level, settings.seed)
    train_content = train[Direction.CONTENT]
    repairs: Counter[str] = Counter()
    with Progress() as progress:

        async def answers(
            client: DescriberClient, label: str, expect_version: str | None, behaviour: bool
        ) -> tuple[list[Prediction], LevelPredictions | None]:
            described = await describe_all(
                client, content_rows, progress, label, expect_version, settings.in_flight, repairs
            )
            if not behaviour:
                return described, None
            return described, await predict_levels(
                client, behaviour_rows, progress, label, expect_version
            )

        # The models are separate describer processes: asking all at once keeps each busy
        # (each is given its share of the cores), instead of one waiting for another.
        models = {BOIGLLM: answers(boigllm, BOIGLLM, checkpoint_version, True)}
        for label, other in (others or {}).items():
            models[label] = answers(other.client, label, other.expect_version, other.behaviour)
        if base is not None:
            models[BASE_MODEL] = answers(base, BASE_MODEL, None, True)
        answered = dict(zip(models, await asyncio.gather(*models.values()), strict=True))
    descriptions = {label: described for label, (described, _) in answered.items()}
    levels = {
        label: predicted for label, (_, predicted) in answered.items() if predicted is not None
    }
    baselines = (
        NearestPastImage(train_content, embed),
        BrandAveragePalette(train_content),
        BrandAveragePalette(train_content, by_level=True),
    )
    for baseline in baselines:
        descriptions[baseline.name] = baseline.predict(content_rows)
    levels.update(behaviour_baselines(train.get(Direction.BEHAVIOUR, []), behaviour_rows))
    has_captions = any(parse(row.verbalization).caption for row in content_rows)
    return EvaluationResult(
        methods=tuple(descriptions),
        description=description_estimates(
            content_rows, descriptions, settings, embed if has_captions else None
        ),
        behaviour=behaviour_estimates(behaviour_rows, levels, settings),
        examples=example_rows(content_rows, descriptions, media, settings.report_examples),
        description_failures=description_failures(descriptions),
        description_repairs={label: repairs[label] for label in answered},
        meta={
            **meta,
            "content rows": str(len(content_rows)),
            "behaviour rows": str(len(behaviour_rows)),
            "rows per level": str(settings.rows_per_level),
            "confidence": f"{settings.confidence:.0%} percentile bootstrap, "
            f"{settings.resamples} resamples of the rows, seed {settings.seed}",
            "captions": "yes" if has_captions else "none in the data (caption cosine n/a)",
            "evaluated at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
