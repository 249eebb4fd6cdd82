"""What one generation job may cost in this deployment: read on both sides of the queue.

The gateway and the generator worker never import each other; they share these limits, the
job messages (``services.common.contracts``), the job tables (``services.common.jobs``) and
the task name (``services.common.queue``).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.contracts import MAX_CANDIDATES_PER_JOB, MAX_SIDE, GenerateRequest
from services.common.errors import InvalidInput
from services.common.settings import BatchLimits


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
