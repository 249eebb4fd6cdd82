"""The generator worker's settings (env prefix ``BOIG_GENERATOR_``).

The queue itself (broker, result backend, time limits) is configured once for producer and
consumer in ``BOIG_QUEUE_*`` (``services.common.queue.QueueSettings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.checkpoints import BOIGSD_CHECKPOINT
from services.common.contracts import MAX_CANDIDATES_PER_JOB, RewardName, Strategy
from services.common.db import default_database_url
from services.common.jobs import DEFAULT_MAX_ATTEMPTS
from services.common.logging import LogFormat
from services.common.model_folders import SAMPLING_FILE
from services.common.settings import (
    ArtifactStoreSettings,
    default_world_sd_dir,
    http_url,
    log_format_field,
)

FALLBACK_STEPS = 20
FALLBACK_GUIDANCE = 7.5


class GeneratorSettings(ArtifactStoreSettings):
    """Which pipeline, where images and records go, whom to ask, and the per-job defaults."""

    model_config = SettingsConfigDict(env_prefix="BOIG_GENERATOR_", extra="ignore", frozen=True)

    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: LogFormat = log_format_field()
    metrics_port: int = Field(
        default=8104,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus /metrics (0: none).",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics binds to.")
    model_path: Path = Field(
        default_factory=default_world_sd_dir,
        description=(
            "Local diffusers Stable Diffusion folder (SD 1.5, SD-Turbo, ...: model_index.json "
            "and safetensors). Default: the world SD that `make models` trains on the synthetic "
            "brand world (64x64 creatives on a CPU)."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present, else CPU."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description=(
            "CPU threads torch may use (unset: torch's default). On a shared CPU host, fewer "
            "threads than cores avoids spinning threads fighting other processes."
        ),
    )
    database_url: str = Field(
        default_factory=default_database_url,
        description="SQL store of job records and image metadata; the gateway's database.",
    )
    describer_url: str = Field(
        default="http://127.0.0.1:8102",
        description="BoigLLM describer: the target description of every job comes from it.",
    )
    scorer_url: str = Field(
        default="http://127.0.0.1:8103",
        description="Scorer: every image's reward and breakdown; best_of_n ranks by it.",
    )
    upstream_timeout_seconds: float = Field(default=180.0, gt=0)
    checkpoint_registry: Path | None = Field(
        default=None,
        description=(
            "Checkpoint registry holding BoigSD LoRAs (entry `checkpoint_name`); a moved "
            "pointer is loaded by the next task. Unset: the boigsd strategy runs the base "
            "pipeline and says so in the job."
        ),
    )
    checkpoint_name: str = Field(default=BOIGSD_CHECKPOINT, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    default_strategy: Strategy = Field(default="prompt")
    default_steps: int | None = Field(
        default=None,
        ge=1,
        le=150,
        description=(
            "Denoising steps of a job that names none. Unset: the model folder's recommendation "
            f"(its {SAMPLING_FILE}), else {FALLBACK_STEPS}."
        ),
    )
    default_candidates: int = Field(
        default=4,
        ge=1,
        le=MAX_CANDIDATES_PER_JOB,
        description="best_of_n: candidates per job when the request names none (at least count).",
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=30.0,
        description=(
            "Classifier-free guidance. Unset: the model folder's recommendation (the world SD "
            f"was measured best at 2.0), else {FALLBACK_GUIDANCE} as for SD 1.5."
        ),
    )
    reward: RewardName = Field(default="match", description="The reward images are scored with.")
    max_batch: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Most images denoised in one pipeline call; more take several calls.",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of a job that met a transient error (an upstream down, CUDA OOM).",
    )
    retry_backoff_seconds: float = Field(
        default=2.0, ge=0, description="First retry delay; doubles."
    )
    store_outage_retries: int = Field(
        default=60,
        ge=0,
        le=10_000,
        description=(
            "Times a job's message is sent again while the job store is unreachable at claim "
            "(backoff doubling up to a minute: 60 is about an hour); then it is given up and "
            "the sweeper sends the still-queued job again after republish_after_seconds."
        ),
    )
    republish_after_seconds: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "A queued job whose message was last sent this long ago is sent again by the "
            "sweeper: a message given up during a store outage, or lost otherwise, must not "
            "strand the job (a duplicate is harmless: the lease runs a job once)."
        ),
    )
    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=50,
        description=(
            "Starts a job gets before it fails as worker_lost: a worker that dies mid-job (out "
            "of memory, a crash) leaves it to the next one, until the job has been started this "
            "often. Transient-error retries are starts too, so this must exceed max_retries."
        ),
    )
    job_retention_days: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Finished jobs (their rows, images, idempotency keys and image files) are deleted "
            "this many days after they ended; 0 keeps them forever. Clients must fetch their "
            "images within this time."
        ),
    )
    retention_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How often the sweeper deletes jobs past job_retention_days.",
    )
    sweep_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How often the worker looks for jobs whose task the broker lost (a broker restart "
            "without persistence, a gateway that died before sending) and sends them again."
        ),
    )
    unpublished_grace_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A queued job never sent to the broker for this long is sent again.",
    )
    progress_interval_seconds: float = Field(
        default=0.25, gt=0, description="Most frequent progress update in the task state."
    )

    @field_validator("describer_url", "scorer_url")
    @classmethod
    def _http(cls, value: str) -> str:
        return http_url(value)

    @model_validator(mode="after")
    def _attempts_above_retries(self) -> GeneratorSettings:
        # A job released for a transient retry must still be claimable, or it would sit
        # queued forever with no start left.
        if self.max_attempts <= self.max_retries:
            raise ValueError(
                f"max_attempts ({self.max_attempts}) must exceed max_retries ({self.max_retries})"
            )
        return self
