"""Wire models of image generation: the public request, a job's status, the worker's outcome.

The gateway and the generator worker never import each other; they share these models, the
job tables (``services.common.jobs``) and the task name (``services.common.queue``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.contracts import Context, Contract, KpiTarget, ModelInfo
from services.common.errors import InvalidInput
from services.common.settings import BatchLimits

MAX_IMAGES_PER_JOB = 16
MAX_CANDIDATES_PER_JOB = 64
MAX_SIDE = 2048
MAX_SEED = 2**32 - 1

Strategy = Literal["prompt", "best_of_n", "boigsd"]
STRATEGIES: tuple[Strategy, ...] = ("prompt", "best_of_n", "boigsd")


class GenerateRequest(Contract):
    """What a marketing app asks for; fields left out take the generator's settings."""

    context: Context
    target: KpiTarget = Field(default_factory=KpiTarget)
    count: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_JOB, description="Images returned.")
    width: int | None = Field(default=None, ge=64, le=MAX_SIDE, multiple_of=8)
    height: int | None = Field(default=None, ge=64, le=MAX_SIDE, multiple_of=8)
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Image i uses seed + i. Left out, the gateway draws one and records it.",
    )
    strategy: Strategy | None = Field(
        default=None,
        description=(
            "prompt: BoigLLM's target description as the prompt; best_of_n: generate "
            "`candidates`, return the best `count` by reward; boigsd: the published BoigSD "
            "LoRA (the base pipeline, said so, while none is published)."
        ),
    )
    candidates: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CANDIDATES_PER_JOB,
        description="best_of_n only: how many images to generate and score.",
    )
    steps: int | None = Field(default=None, ge=1, le=150, description="Denoising steps.")

    @model_validator(mode="after")
    def _candidates_fit(self) -> GenerateRequest:
        if self.candidates is not None:
            if self.strategy not in (None, "best_of_n"):
                raise ValueError("candidates applies to the best_of_n strategy only")
            if self.candidates < self.count:
                raise ValueError(f"candidates ({self.candidates}) must be at least count")
        return self


class GenerationLimits(BaseSettings):
    """What one generation job may cost, read by the gateway (which refuses more at submit,
    before anything is queued) and by the worker (which refuses a stored request beyond them
    before any denoising): one source of truth for both sides of the queue.

    The contract's own bounds are the widest any deployment may allow; these are this
    deployment's, and the defaults fit one GPU worker."""

    model_config = SettingsConfigDict(env_prefix="BOIG_GENERATION_", extra="ignore")

    max_candidates: int = Field(
        default=32,
        ge=1,
        le=MAX_CANDIDATES_PER_JOB,
        description=(
            "Most images one job denoises (best_of_n candidates, else count). The worker "
            "scores a job's images in one scorer request: keep this at or below "
            "BOIG_BATCH_MAX_ITEMS."
        ),
    )
    max_side: int = Field(
        default=1024, ge=64, le=MAX_SIDE, description="Largest width or height of an image."
    )
    max_steps: int = Field(default=50, ge=1, le=150, description="Most denoising steps.")
    max_queued_per_owner: int = Field(
        default=20,
        ge=1,
        description=(
            "Jobs one API key may have waiting in the queue; more get 429 with Retry-After, "
            "so one client cannot fill the queue that every key shares."
        ),
    )

    @model_validator(mode="after")
    def _scored_in_one_request(self) -> GenerationLimits:
        # Found at startup, not after a job has drawn its images and the scorer refuses them.
        batch = BatchLimits().max_items
        if self.max_candidates > batch:
            raise ValueError(
                f"max_candidates ({self.max_candidates}) is more than BOIG_BATCH_MAX_ITEMS "
                f"({batch}): a job's images are scored in one request"
            )
        return self

    def check(self, request: GenerateRequest) -> None:
        """Raise InvalidInput naming every field of ``request`` beyond these limits."""
        problems = []
        images = request.candidates or request.count
        if images > self.max_candidates:
            problems.append(f"{images} images to generate; at most {self.max_candidates}")
        for name, side in (("width", request.width), ("height", request.height)):
            if side is not None and side > self.max_side:
                problems.append(f"{name} {side}; at most {self.max_side}")
        if request.steps is not None and request.steps > self.max_steps:
            problems.append(f"{request.steps} steps; at most {self.max_steps}")
        if problems:
            raise InvalidInput("this deployment's generation limits: " + "; ".join(problems))


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})


class JobAccepted(Contract):
    job_id: str
    status_url: str
    state: JobState


class JobProgress(Contract):
    stage: Literal["starting", "describing", "denoising", "scoring", "saving"]
    step: int = Field(ge=0, description="Denoising steps done.")
    total: int = Field(ge=0, description="Denoising steps in all.")
    eta_seconds: float | None = Field(default=None, ge=0)


class JobError(Contract):
    type: str = Field(description="The error type, as in every BOIG error body.")
    message: str


class JobImage(Contract):
    id: str
    url: str
    rank: int = Field(ge=1)
    seed: int
    width: int
    height: int
    reward: float | None = Field(description="Total reward; null when the job has no scorer.")
    breakdown: dict[str, float]


class JobOutcome(Contract):
    """What the worker records about how it made the images."""

    strategy: Strategy
    width: int
    height: int
    steps: int
    seed: int
    candidates: int
    target_description: str | None = Field(description="BoigLLM's description, text form.")
    prompt: str
    negative_prompt: str | None
    reward: str | None = Field(description="The reward the images were ranked by.")
    models: dict[str, ModelInfo] = Field(description="Every model and checkpoint version used.")
    notes: list[str] = Field(default_factory=list, description="Fallbacks and caveats.")


class JobStatus(Contract):
    job_id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int = Field(description="Times a worker started this job (redeliveries included).")
    cancel_requested: bool = Field(description="A cancel was asked; a running job stops soon.")
    queue_position: int | None = Field(description="1 = next to start; only while queued.")
    progress: JobProgress | None
    request: GenerateRequest
    outcome: JobOutcome | None
    images: list[JobImage]
    error: JobError | None
