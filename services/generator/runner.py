"""One generation job, start to finish: describe, denoise, score, rank, store.

Every strategy asks BoigLLM (the describer) for the target description and renders it into
the prompt, with the ``low`` description as the negative prompt; they differ in what is
generated and kept:

- ``prompt``: ``count`` images from the base pipeline;
- ``best_of_n``: ``candidates`` images, the best ``count`` by the scorer's reward;
- ``boigsd``: ``count`` images from the pipeline with the published BoigSD LoRA.

Every kept image is scored, so each job reports rewards with their breakdown.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from services.common.clients import DescriberClient, ScorerClient
from services.common.contracts import (
    Creative,
    DescribeResponse,
    GenerateRequest,
    JobOutcome,
    JobProgress,
    KpiLevel,
    KpiTarget,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
    Strategy,
    TargetDescription,
    compared_levels,
)
from services.common.errors import BoigError
from services.common.image_prompts import render_negative_prompt, render_prompt
from services.common.jobs import NewImage
from services.common.loop_thread import EventLoopThread
from services.common.model_folders import SamplingDefaults
from services.common.storage import ArtifactStore
from services.generator import SERVICE
from services.generator.boigsd import MODEL_BOIGSD, BoigsdLoras
from services.generator.pipeline import ImagePipeline, ImageRequest
from services.generator.settings import FALLBACK_GUIDANCE, FALLBACK_STEPS, GeneratorSettings

IMAGE_NAMESPACE = "generated"
MODEL_DIFFUSION = "diffusion"
"""The base pipeline's key in a job's ``models`` and its ``model`` label in the model metrics."""


class JobControl(Protocol):
    """The task's side of a run: progress goes out, cancellation and time limits come in."""

    def check(self) -> None:
        """Raise to stop the run (canceled, out of time); called before every step."""

    def report(self, progress: JobProgress) -> None: ...


@dataclass(frozen=True)
class Plan:
    """The request with every default resolved: what the job actually runs."""

    strategy: Strategy
    width: int
    height: int
    steps: int
    seed: int
    count: int
    candidates: int


@dataclass(frozen=True)
class RunResult:
    outcome: JobOutcome
    images: list[NewImage]


def plan(
    request: GenerateRequest,
    settings: GeneratorSettings,
    native_size: tuple[int, int],
    recommended: SamplingDefaults = SamplingDefaults(),
) -> Plan:
    strategy = request.strategy or settings.default_strategy
    candidates = request.count
    if strategy == "best_of_n":
        candidates = request.candidates or max(settings.default_candidates, request.count)
    if request.seed is None:
        raise ValueError("the gateway records a seed for every job; this one has none")
    return Plan(
        strategy=strategy,
        width=request.width or native_size[0],
        height=request.height or native_size[1],
        steps=request.steps or settings.default_steps or recommended.steps or FALLBACK_STEPS,
        seed=request.seed,
        count=request.count,
        candidates=candidates,
    )


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class JobRunner:
    """Holds the loaded pipeline (one per worker process) and runs jobs on it, with one
    describer and one scorer client for the process on an event loop of its own."""

    def __init__(
        self,
        settings: GeneratorSettings,
        pipeline: ImagePipeline,
        artifacts: ArtifactStore,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.artifacts = artifacts
        self.loras = BoigsdLoras(pipeline, settings.checkpoint_registry, settings.checkpoint_name)
        self._loop = EventLoopThread("generator-upstreams")
        timeout = settings.upstream_timeout_seconds
        self._describer = DescriberClient(settings.describer_url, timeout=timeout, caller=SERVICE)
        self._scorer = ScorerClient(settings.scorer_url, timeout=timeout, caller=SERVICE)

    def close(self) -> None:
        """Close the upstream clients and their loop (the pipeline stays loaded); again: no-op."""
        if self._loop.closed:
            return
        self._loop.run(self._describer.aclose())
        self._loop.run(self._scorer.aclose())
        self._loop.close()

    @property
    def guidance_scale(self) -> float:
        """The setting, else what the model folder recommends, else SD 1.5's usual 7.5."""
        if self.settings.guidance_scale is not None:
            return self.settings.guidance_scale
        recommended = self.pipeline.sampling.guidance_scale
        return FALLBACK_GUIDANCE if recommended is None else recommended

    def run(self, request: GenerateRequest, control: JobControl) -> RunResult:
        job_plan = plan(request, self.settings, self.pipeline.native_size, self.pipeline.sampling)
        control.report(JobProgress(stage="starting", step=0, total=job_plan.steps))
        choice = self.loras.choose(use_boigsd=job_plan.strategy == "boigsd")
        notes = list(choice.notes)
        models: dict[str, ModelInfo] = {
            MODEL_DIFFUSION: ModelInfo(
                name=self.pipeline.model_path.name, version=self.pipeline.base_version
            )
        }
        if choice.model is not None:
            models[MODEL_BOIGSD] = choice.model

        control.check()
        control.report(JobProgress(stage="describing", step=0, total=job_plan.steps))
        target, low = self._loop.run(self._describe(request, notes))
        models["describer"] = target.model
        count_tokens = self.pipeline.count_prompt_tokens
        prompt = render_prompt(target.verbalization, request.context, count_tokens=count_tokens)
        negative = (
            render_negative_prompt(
                low.verbalization, target=target.verbalization, count_tokens=count_tokens
            )
            if low is not None
            else None
        )

        images = self._denoise(job_plan, prompt, negative or None, control)

        control.check()
        control.report(JobProgress(stage="scoring", step=job_plan.steps, total=job_plan.steps))
        pngs = [encode_png(image) for image in images]
        # The scorer compares with the descriptions the prompts were made from, not with a
        # second answer of the describer (another sample, or a model reloaded meanwhile).
        scores = self._loop.run(self._score(request, pngs, _compared_with(request, target, low)))
        for name, info in scores.models.items():
            models.setdefault(name, info)
        kept = scores.results[: job_plan.count]

        control.report(JobProgress(stage="saving", step=job_plan.steps, total=job_plan.steps))
        saved = []
        for rank, result in enumerate(kept, start=1):
            index = int(result.id.removeprefix("candidate-"))
            ref = self.artifacts.put(pngs[index], namespace=IMAGE_NAMESPACE, suffix=".png")
            saved.append(
                NewImage(
                    rank=rank,
                    seed=job_plan.seed + index,
                    width=images[index].width,
                    height=images[index].height,
                    artifact_key=ref.key,
                    sha256=ref.sha256,
                    reward=result.total,
                    breakdown=dict(result.breakdown),
                )
            )
        outcome = JobOutcome(
            strategy=job_plan.strategy,
            width=job_plan.width,
            height=job_plan.height,
            steps=job_plan.steps,
            seed=job_plan.seed,
            candidates=job_plan.candidates,
            target_description=target.text,
            prompt=prompt,
            negative_prompt=negative or None,
            reward=scores.reward,
            models=models,
            notes=notes,
        )
        return RunResult(outcome=outcome, images=saved)

    async def _describe(
        self, request: GenerateRequest, notes: list[str]
    ) -> tuple[DescribeResponse, DescribeResponse | None]:
        wanted = self._describer.describe(request.context, request.target)
        if request.target.level is KpiLevel.LOW:
            return await wanted, None
        # The look of a low-KPI creative is what the negative prompt steers away from.
        low = self._describer.describe(
            request.context, KpiTarget(name=request.target.name, level=KpiLevel.LOW)
        )
        target, avoided = await asyncio.gather(wanted, low, return_exceptions=True)
        if isinstance(target, BaseException):
            raise target
        if isinstance(avoided, BoigError):
            # The job can do without a negative prompt; it cannot do without its target.
            notes.append(f"no negative prompt: the low-level description failed ({avoided.type})")
            return target, None
        if isinstance(avoided, BaseException):
            raise avoided
        return target, avoided

    async def _score(
        self,
        request: GenerateRequest,
        pngs: Sequence[bytes],
        described: Mapping[KpiLevel, DescribeResponse],
    ) -> ScoreResponse:
        reward = self.settings.reward
        score_request = ScoreRequest(
            context=request.context,
            target=request.target,
            reward=reward,
            creatives=[
                Creative(id=f"candidate-{index}", data=data) for index, data in enumerate(pngs)
            ],
            targets=[
                TargetDescription.described(level, described[level])
                # The levels this reward compares with, as far as the prompts came from them.
                for level in compared_levels(reward, request.target.level)
                if level in described
            ],
        )
        return await self._scorer.score(score_request)

    def _denoise(
        self, job_plan: Plan, prompt: str, negative: str | None, control: JobControl
    ) -> list[Image.Image]:
        started = time.monotonic()
        batches = _batches(job_plan.candidates, self.settings.max_batch)
        total = job_plan.steps * len(batches)
        done = 0
        images: list[Image.Image] = []

        def on_step(step: int, _steps: int) -> None:
            control.check()
            finished = done + step
            elapsed = time.monotonic() - started
            eta = elapsed / finished * (total - finished) if finished else None
            control.report(
                JobProgress(stage="denoising", step=finished, total=total, eta_seconds=eta)
            )

        for first, size in batches:
            images += self.pipeline.generate(
                ImageRequest(
                    prompt=prompt,
                    negative_prompt=negative,
                    width=job_plan.width,
                    height=job_plan.height,
                    steps=job_plan.steps,
                    guidance_scale=self.guidance_scale,
                    seed=job_plan.seed + first,
                    count=size,
                ),
                on_step=on_step,
            )
            done += job_plan.steps
        return images


def _compared_with(
    request: GenerateRequest, target: DescribeResponse, low: DescribeResponse | None
) -> dict[KpiLevel, DescribeResponse]:
    """The descriptions the prompts were made from, by level: the scorer compares with them."""
    described = {request.target.level: target}
    if low is not None:
        described.setdefault(KpiLevel.LOW, low)
    return described


def _batches(count: int, max_batch: int) -> list[tuple[int, int]]:
    """(first index, size) of each pipeline call; image i always gets seed + i."""
    return [(first, min(max_batch, count - first)) for first in range(0, count, max_batch)]
