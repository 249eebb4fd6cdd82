"""The training worker's settings (env prefix ``BOIG_TRAINER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.db import default_database_url
from services.common.logging import LogFormat
from services.common.settings import (
    boig_home,
    checkpoint_registry,
    default_world_sd_dir,
    log_format_field,
)
from services.trainer.runs import DEFAULT_MAX_ATTEMPTS


class TrainerSettings(BaseSettings):
    """Where runs are recorded, which services they use, and how a dead worker's run is
    taken over."""

    model_config = SettingsConfigDict(env_prefix="BOIG_TRAINER_", extra="ignore", frozen=True)

    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: LogFormat = log_format_field()
    database_url: str = Field(
        default_factory=default_database_url,
        description="SQLAlchemy URL of the database holding training runs (the gateway's).",
    )
    describer_url: str = Field(
        default="http://127.0.0.1:8102", description="The describer that writes the prompts."
    )
    scorer_url: str = Field(
        default="http://127.0.0.1:8103", description="The scorer whose reward is trained on."
    )
    registry: Path = Field(
        default_factory=lambda: checkpoint_registry(boig_home()),
        description="Checkpoint registry the BoigSD LoRA is published to (entry `boigsd`).",
    )
    model_path: Path = Field(
        default_factory=default_world_sd_dir,
        description="The diffusers pipeline folder whose UNet gets the LoRA.",
    )
    dataset_dir: Path | None = Field(
        default=None,
        description=(
            "Ingested dataset (a version folder, or a folder with `latest`) whose training "
            "split gives the contexts. Required to run BoigSD jobs."
        ),
    )
    runs_root: Path = Field(
        default_factory=lambda: boig_home() / "runs" / "training",
        description="One folder per run id: checkpoints that a resumed run continues from.",
    )
    device: str = Field(default="auto", description="torch device: auto, cpu, cuda, cuda:N.")
    lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "A run's lease, renewed every quarter of it while the worker lives: a worker gone "
            "this long has its run taken over (and resumed) by another."
        ),
    )
    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        description="Starts a run gets before it fails as worker_lost.",
    )
    sweep_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often the worker looks for runs to send again."
    )
    unpublished_grace_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A queued run whose task was not sent for this long is sent again.",
    )
    task_time_limit_seconds: float = Field(
        default=7 * 86400.0, gt=0, description="A training task is stopped after this long."
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus /metrics here (None: off)."
    )
    metrics_host: str = Field(default="127.0.0.1")
