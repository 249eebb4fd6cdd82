"""Do BoigSD's images really perform better? The hidden true KPI of every method's images on
held-out (future) posts of the synthetic world, with paired bootstrap intervals.

Each held-out post gives a context (brand, time, text) and the real creative that was posted.
Every method draws ``samples`` images for it from the same seeds; the judge measures each
image (:mod:`.measure`) and the world's hidden ground truth turns the measurement into the
post's expected log-KPI. Because brand and time terms are the same for every method on a
post, per-post differences between methods are differences of taste alone; they are averaged
per post first and bootstrapped over posts (95% percentile intervals), so an interval says
how much the answer would move on another draw of future posts.

Methods (rows of the report):

- **real post**: the creative the brand really posted, measured by the same judge;
- **base**: the base model prompted with the real post's own description (what the brand
  posted, drawn by the model): the KPI-agnostic starting point;
- **prompt-only**: the base model prompted from BoigLLM's description of a high-KPI image;
- **best-of-N**: the prompt-only image with the highest training reward among N draws;
- **SFT**: the base model fine-tuned on the account's high-KPI creatives, same prompt;
- **BoigSD**: the base model with the DDPO LoRA, same prompt.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from PIL import Image

from services.common.contracts import Context, Verbalization
from services.trainer.evaluate.bootstrap import bootstrap_mean
from services.trainer.evaluate.results import Estimate
from services.trainer.evaluate.sd.measure import measure
from services.trainer.world.brands import Brand
from services.trainer.world.ground_truth import expected_log_kpi
from services.trainer.world_sd.metrics import (
    mean_pairwise_distance,
    palette_rgb_distance,
    prompted_shape_recall,
    tone_agreement,
)

REAL = "real post"
BASE = "base"
PROMPT_ONLY = "prompt-only"
BEST_OF_N = "best-of-N"
SFT = "SFT"
BOIGSD = "BoigSD"

Judge = Callable[[list[Image.Image]], Awaitable[list[Verbalization]]]
"""Images -> the judge featurizer's descriptions (its second detector's objects), in order."""
RewardOf = Callable[[Context, list[Image.Image]], Awaitable[list[float]]]
"""One post's images -> their training reward (the scorer's), in order."""


@dataclass(frozen=True)
class HeldOutPost:
    id: str
    context: Context
    brand: Brand
    real_image: Image.Image
    """At the models' resolution, so the judge sees real and generated images alike."""
    real_description: Verbalization
    """The featurizer's description of the real creative (the base prompt's source)."""
    recorded_log_kpi: float
    """The ground truth's expected log-KPI of the real creative from the attributes it was
    drawn with, less the overlay-text term (the judge reads no text): what the judge's
    measurement of the same creative is checked against."""

    @property
    def posted_at(self) -> datetime:
        if self.context.posted_at is None:
            raise ValueError(f"held-out post {self.id} has no posting time")
        return self.context.posted_at


@dataclass
class MethodImages:
    """One method's images per post (post order), and the description each post's prompt was
    written from (None where there was no prompt: the real post)."""

    name: str
    images: list[list[Image.Image]]
    asked: list[Verbalization | None]


@dataclass
class JudgedMethod:
    """Per post and image: the judge's description, the true expected log-KPI of what it
    measured, and the training reward."""

    name: str
    images: list[list[Image.Image]]
    asked: list[Verbalization | None]
    found: list[list[Verbalization]] = field(default_factory=list)
    log_kpi: list[list[float]] = field(default_factory=list)
    reward: list[list[float]] = field(default_factory=list)

    def per_post(self, values: list[list[float]]) -> list[float]:
        return [float(np.mean(row)) for row in values]


async def judge_method(
    method: MethodImages, posts: Sequence[HeldOutPost], judge: Judge, reward_of: RewardOf
) -> JudgedMethod:
    judged = JudgedMethod(method.name, method.images, method.asked)
    flat = [image for group in method.images for image in group]
    found = await judge(flat)
    cursor = 0
    for post, group in zip(posts, method.images, strict=True):
        descriptions = found[cursor : cursor + len(group)]
        cursor += len(group)
        judged.found.append(descriptions)
        judged.log_kpi.append(
            [
                expected_log_kpi(measure(image, description.objects), post.brand, post.posted_at)
                for image, description in zip(group, descriptions, strict=True)
            ]
        )
        judged.reward.append(await reward_of(post.context, group))
    return judged


def first_draws(method: JudgedMethod, n: int) -> JudgedMethod:
    """The method as if it had drawn only its first ``n`` images per post."""
    return JudgedMethod(
        method.name,
        [row[:n] for row in method.images],
        method.asked,
        [row[:n] for row in method.found],
        [row[:n] for row in method.log_kpi],
        [row[:n] for row in method.reward],
    )


def best_of_n(method: JudgedMethod, n: int) -> JudgedMethod:
    """Per post, the one image of the first ``n`` with the highest training reward: what a
    generator serving best-of-N would hand out, judged as it was."""
    picked = JudgedMethod(BEST_OF_N, [], method.asked)
    for i, rewards in enumerate(method.reward):
        if len(rewards) < n:
            raise ValueError(f"best-of-{n} needs {n} draws per post, got {len(rewards)}")
        j = int(np.argmax(rewards[:n]))
        picked.images.append([method.images[i][j]])
        picked.found.append([method.found[i][j]])
        picked.log_kpi.append([method.log_kpi[i][j]])
        picked.reward.append([method.reward[i][j]])
    return picked


# --- the table ------------------------------------------------------------------------------

LIFT_VS_BASE = "true KPI vs base"
LIFT_VS_PROMPT = "true KPI vs prompt-only"
TRUE_LOG_KPI = "true log-KPI vs real post"
REWARD = "training reward"
COLOUR = "colour distance"
TONES = "tone agreement"
SHAPES = "shape recall"
DIVERSITY = "diversity"
METRICS = (LIFT_VS_BASE, LIFT_VS_PROMPT, TRUE_LOG_KPI, REWARD, COLOUR, TONES, SHAPES, DIVERSITY)
LOWER_IS_BETTER = frozenset({COLOUR})
PERCENT_METRICS = frozenset({LIFT_VS_BASE, LIFT_VS_PROMPT})
"""Shown as exp(mean per-post log-KPI difference) - 1, in %: the geometric-mean change of
the expected KPI."""


def as_percent(log_difference: float) -> float:
    return 100.0 * (math.exp(log_difference) - 1.0)


def efficacy_table(
    methods: Sequence[JudgedMethod], posts: Sequence[HeldOutPost]
) -> dict[str, dict[str, Estimate | None]]:
    """Method -> metric -> estimate over posts. Lifts are paired per post (log-KPI
    differences, reported as % of expected KPI); "true log-KPI vs real post" is the mean
    log-KPI minus the real creative's as the judge measures it."""
    by_name = {method.name: method for method in methods}
    base = by_name[BASE].per_post(by_name[BASE].log_kpi)
    prompt = by_name[PROMPT_ONLY].per_post(by_name[PROMPT_ONLY].log_kpi)
    real = by_name[REAL].per_post(by_name[REAL].log_kpi)
    table: dict[str, dict[str, Estimate | None]] = {}
    for method in methods:
        values = method.per_post(method.log_kpi)
        row: dict[str, Estimate | None] = {
            LIFT_VS_BASE: _lift(values, base),
            LIFT_VS_PROMPT: _lift(values, prompt),
            TRUE_LOG_KPI: bootstrap_mean([v - r for v, r in zip(values, real, strict=True)]),
            REWARD: bootstrap_mean(method.per_post(method.reward)),
        }
        row |= _faithfulness(method)
        table[method.name] = row
    return table


def _lift(values: Sequence[float], reference: Sequence[float]) -> Estimate | None:
    difference = bootstrap_mean([v - r for v, r in zip(values, reference, strict=True)])
    if difference is None:
        return None
    return Estimate(
        value=as_percent(difference.value),
        low=as_percent(difference.low),
        high=as_percent(difference.high),
        n=difference.n,
    )


def _faithfulness(method: JudgedMethod) -> dict[str, Estimate | None]:
    colour: list[float | None] = []
    tones: list[float | None] = []
    shapes: list[float | None] = []
    diversity: list[float | None] = []
    for asked, found, images in zip(method.asked, method.found, method.images, strict=True):
        if asked is None:
            colour.append(None)
            tones.append(None)
            shapes.append(None)
        else:
            colour.append(_mean([palette_rgb_distance(f, asked) for f in found]))
            tones.append(_mean([tone_agreement(f, asked) for f in found]))
            shapes.append(_mean([prompted_shape_recall(asked, f) for f in found]))
        diversity.append(mean_pairwise_distance(images))
    return {
        COLOUR: bootstrap_mean(colour),
        TONES: bootstrap_mean(tones),
        SHAPES: bootstrap_mean(shapes),
        DIVERSITY: bootstrap_mean(diversity),
    }


def judge_calibration(real: JudgedMethod, posts: Sequence[HeldOutPost]) -> dict[str, float]:
    """How well the judge's measurement of the real creatives reproduces their expected
    log-KPI from the attributes they were drawn with: Pearson r and mean absolute error over
    posts (in log-KPI units; 0.1 is about 10% of expected KPI)."""
    measured = np.array(real.per_post(real.log_kpi))
    recorded = np.array([post.recorded_log_kpi for post in posts])
    if len(posts) < 2 or np.std(measured) == 0 or np.std(recorded) == 0:
        return {
            "pearson_r": float("nan"),
            "mean_abs_error": float(np.mean(abs(measured - recorded))),
        }
    return {
        "pearson_r": float(np.corrcoef(measured, recorded)[0, 1]),
        "mean_abs_error": float(np.mean(np.abs(measured - recorded))),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [value for value in values if value is not None]
    return float(np.mean(kept)) if kept else None


# --- the whole evaluation ------------------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    """BoigSD's LoRA of one evaluated training epoch, judged on the held-out posts."""

    epoch: int
    reward: Estimate | None
    """Training reward of its images on the held-out posts."""
    lift: Estimate | None
    """True KPI vs base, % (paired over posts)."""
    heldout_reward: float | None
    """The run's own early-stopping reward at that epoch (its held-out training prompts)."""


@dataclass(frozen=True)
class SdEfficacy:
    posts: list[HeldOutPost]
    methods: list[JudgedMethod]
    table: dict[str, dict[str, Estimate | None]]
    calibration: dict[str, float]
    curve: list[CurvePoint]
    published_epoch: int | None
    """The epoch whose LoRA the BoigSD row is (early stopping's pick), when known."""
    meta: dict[str, str]


def curve_point(
    epoch: int,
    judged: JudgedMethod,
    base: JudgedMethod,
    heldout_reward: float | None,
) -> CurvePoint:
    lift = _lift(judged.per_post(judged.log_kpi), base.per_post(base.log_kpi))
    return CurvePoint(
        epoch=epoch,
        reward=bootstrap_mean(judged.per_post(judged.reward)),
        lift=lift,
        heldout_reward=heldout_reward,
    )


def reward_hacking(curve: Sequence[CurvePoint]) -> list[str]:
    """Where the training reward rose between two evaluated epochs while the true KPI fell
    beyond its interval's noise (the later lift's interval wholly below the earlier value):
    the symptom the early-stopping guard exists for. One line per such stretch."""
    found = []
    for before, after in itertools.pairwise(curve):
        if before.reward is None or after.reward is None or before.lift is None:
            continue
        if after.lift is None:
            continue
        if after.reward.value > before.reward.value and after.lift.high < before.lift.value:
            found.append(
                f"epochs {before.epoch}->{after.epoch}: reward {before.reward.value:.3f}->"
                f"{after.reward.value:.3f} while true KPI vs base {before.lift.value:+.1f}%->"
                f"{after.lift.value:+.1f}%"
            )
    return found
