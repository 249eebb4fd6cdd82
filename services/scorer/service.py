"""Scoring logic: featurize the creatives, ask BoigLLM for the target, compute and rank rewards.

No FastAPI here; the upstream services are reached only through the typed common clients,
whose typed errors pass through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common import metrics
from services.common.clients import DescriberClient, FeaturizerClient
from services.common.contracts import (
    CreativeScore,
    FeaturizeResponse,
    ImageInput,
    KpiTarget,
    LikelihoodResponse,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
    TargetDescription,
    Verbalization,
    compared_levels,
)
from services.common.errors import UpstreamError
from services.common.settings import BatchLimits
from services.scorer.edits import EditReward, Suggestions, suggest_edits
from services.scorer.rewards import (
    DEFAULT_COLOR_SCALE,
    MatchWeights,
    Reward,
    contrastive_rewards,
    likelihood_reward,
    match_rewards,
)

logger = logging.getLogger(__name__)


class Scorer:
    """Scores a batch of creatives against a context and KPI target with one of three rewards."""

    def __init__(
        self,
        *,
        featurizer: FeaturizerClient,
        describer: DescriberClient,
        weights: MatchWeights,
        color_scale: float = DEFAULT_COLOR_SCALE,
        batch_limits: BatchLimits | None = None,
    ) -> None:
        self._featurizer = featurizer
        self._describer = describer
        self._weights = weights
        self._color_scale = color_scale
        self._batch_limits = batch_limits or BatchLimits()

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        self._batch_limits.check(len(request.creatives), "creatives")
        # The scorer never decodes images itself: the featurizer owns decoding and its limits,
        # and answers invalid_image naming the creative, which passes through to the caller.
        images = [ImageInput(id=c.id, data=c.data) for c in request.creatives]
        if request.reward == "match":
            featurized, targets, describer_model = await self._featurize_and_describe(
                images, request
            )
            verbalizations = _in_request_order(featurized, request)
            rewards = match_rewards(
                verbalizations,
                targets[0].verbalization,
                self._weights,
                color_scale=self._color_scale,
            )
        elif request.reward == "contrastive":
            # Always high vs low, whatever level the request names: that contrast is the reward.
            featurized, targets, describer_model = await self._featurize_and_describe(
                images, request
            )
            high, low = targets
            verbalizations = _in_request_order(featurized, request)
            rewards = contrastive_rewards(
                verbalizations,
                high.verbalization,
                low.verbalization,
                self._weights,
                color_scale=self._color_scale,
            )
        else:
            # Behaviour simulation needs the verbalizations first, so these two calls are serial.
            featurized = await self._featurizer.featurize(images)
            verbalizations = _in_request_order(featurized, request)
            likelihood = await self._describer.likelihood(
                request.context, verbalizations, kpi_name=request.target.name
            )
            rewards = _likelihood_rewards(likelihood, len(verbalizations))
            targets = []
            describer_model = likelihood.model

        for reward in rewards:
            metrics.REWARD.labels(request.reward).observe(reward.total)
        suggestions = (
            await self._suggest_edits(request, verbalizations, targets, rewards[0].weights)
            if request.max_edits
            else None
        )
        return ScoreResponse(
            reward=request.reward,
            weights=rewards[0].weights,
            targets=targets,
            results=_ranked(request, verbalizations, rewards, _notes(featurized), suggestions),
            models=_models(featurized, describer_model),
        )

    async def _suggest_edits(
        self,
        request: ScoreRequest,
        verbalizations: list[Verbalization],
        targets: list[TargetDescription],
        weights: dict[str, float],
    ) -> list[Suggestions]:
        """Each creative's edits, scored with the reward and the weights its total got (the
        request's validation keeps the likelihood reward, which compares with no
        description, from getting here)."""
        reward = EditReward(
            references=tuple(target.verbalization for target in targets),
            weights=weights,
            color_scale=self._color_scale,
        )
        started = time.perf_counter()
        # Up to ~100 candidates a creative, each a reward term: milliseconds per creative,
        # kept off the event loop so that a large batch does not stall other requests.
        suggestions = await asyncio.to_thread(
            lambda: [
                suggest_edits(verbalization, reward, max_edits=request.max_edits)
                for verbalization in verbalizations
            ]
        )
        logger.debug(
            "suggested %d edits for %d creatives in %.1f ms",
            sum(len(s.edits) for s in suggestions),
            len(verbalizations),
            (time.perf_counter() - started) * 1000,
        )
        return suggestions

    async def _featurize_and_describe(
        self, images: list[ImageInput], request: ScoreRequest
    ) -> tuple[FeaturizeResponse, list[TargetDescription], ModelInfo | None]:
        """Featurize, and describe the levels the reward compares with that the request
        brings no description of, concurrently: the two services are independent. The model
        is the describer's that answered here (none when the request brought every
        description: a caller's word on which model wrote them is echoed in its targets,
        never reported as ours)."""
        levels = compared_levels(request.reward, request.target.level)
        given = {target.level: target for target in request.targets}
        async with _task_group() as group:
            featurize = group.create_task(self._featurizer.featurize(images))
            describes = {
                level: group.create_task(
                    self._describer.describe(
                        request.context, KpiTarget(name=request.target.name, level=level)
                    )
                )
                for level in levels
                if level not in given
            }
        targets = [
            given.get(level) or TargetDescription.described(level, describes[level].result())
            for level in levels
        ]
        answers = [task.result() for task in describes.values()]
        return featurize.result(), targets, answers[0].model if answers else None


@asynccontextmanager
async def _task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """A TaskGroup (like asyncio.gather, but cancels the siblings when one call fails) that
    re-raises the first failure itself, so typed upstream errors reach the error handler."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None


def _in_request_order(featurized: FeaturizeResponse, request: ScoreRequest) -> list[Verbalization]:
    by_id = {result.id: result.verbalization for result in featurized.results}
    wanted = [creative.id for creative in request.creatives]
    if len(featurized.results) != len(wanted) or set(by_id) != set(wanted):
        raise UpstreamError("featurizer answered for a different set of images than it was sent")
    return [by_id[creative_id] for creative_id in wanted]


def _likelihood_rewards(likelihood: LikelihoodResponse, count: int) -> list[Reward]:
    if len(likelihood.results) != count:
        raise UpstreamError(
            f"describer returned {len(likelihood.results)} likelihoods for {count} creatives"
        )
    return [likelihood_reward(distribution) for distribution in likelihood.results]


def _notes(featurized: FeaturizeResponse) -> dict[str | None, list[str]]:
    return {
        result.id: ["animated image: only its first frame was scored"] if result.animated else []
        for result in featurized.results
    }


def _ranked(
    request: ScoreRequest,
    verbalizations: list[Verbalization],
    rewards: list[Reward],
    notes: dict[str | None, list[str]],
    suggestions: list[Suggestions] | None = None,
) -> list[CreativeScore]:
    edits = suggestions or [Suggestions()] * len(rewards)
    rows = zip(request.creatives, verbalizations, rewards, edits, strict=True)
    # Best first; ties broken by id so that equal scores rank the same way on every call.
    ordered = sorted(rows, key=lambda row: (-row[2].total, row[0].id))
    return [
        CreativeScore(
            id=creative.id,
            rank=rank,
            total=reward.total,
            breakdown=reward.breakdown,
            verbalization=verbalization,
            notes=notes.get(creative.id, []),
            edits=suggested.edits,
            total_with_edits=suggested.total_with_edits,
        )
        for rank, (creative, verbalization, reward, suggested) in enumerate(ordered, start=1)
    ]


def _models(featurized: FeaturizeResponse, describer: ModelInfo | None) -> dict[str, ModelInfo]:
    models = {"featurizer": ModelInfo(name="featurizer", version=featurized.featurizer_version)}
    if describer is not None:  # none when the caller wrote every description itself
        models["describer"] = describer
    if featurized.detector is not None:
        models["detector"] = featurized.detector
    return models
