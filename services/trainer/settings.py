"""The training worker's settings (env prefix ``BOIG_TRAINER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.db import default_database_url
from services.common.logging import LogFormat
from services.common.settings import (
    ArtifactStoreSettings,
    boig_home,
    checkpoint_registry,
    default_history_path,
    default_smollm2_dir,
    default_world_sd_dir,
    log_format_field,
)
from services.trainer.runs import DEFAULT_MAX_ATTEMPTS


class TrainerSettings(ArtifactStoreSettings):
    """Where runs are recorded, which services they use, how a dead worker's run is taken
    over, and when and how BoigLLM is retrained on KPI feedback (the artifact store is the
    gateway's: feedback keeps its images there)."""

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
    featurizer_url: str = Field(
        default="http://127.0.0.1:8101",
        description="The featurizer that describes feedback images when a retrain folds them in.",
    )
    llm_base_model: Path = Field(
        default_factory=default_smollm2_dir,
        description=(
            "The base model folder BoigLLM checkpoints adapt; a retrained candidate must adapt "
            "the same weights as the served checkpoint."
        ),
    )
    history_path: Path | None = Field(
        default_factory=default_history_path,
        description=(
            "The describer's history store; a retrain adds the folded feedback posts to it "
            "(None: leave it alone)."
        ),
    )
    retrain_interval_seconds: float | None = Field(
        default=None,
        gt=0,
        description=(
            "How often the worker queues a BoigLLM retrain (fold new feedback, train, measure, "
            "promote or reject); None: never on its own (`make retrain` or `boig llm retrain "
            "--enqueue`). A retrain with no new feedback ends in seconds without training. "
            "Needs dataset_dir."
        ),
    )
    retrain_accounts: list[str] | None = Field(
        default=None,
        description=(
            "Accounts whose feedback a retrain folds in (JSON list); None: every account of "
            "dataset_dir. A new account's first posts are folded in only when named here."
        ),
    )
    retrain_trusted_keys: list[str] | None = Field(
        default=None,
        description=(
            "API key prefixes whose feedback a retrain trusts (JSON list); None: every key's. "
            "Anyone holding a key can report KPIs: list the keys of the apps that report "
            "measured ones."
        ),
    )
    retrain_kpi_name: str | None = Field(
        default=None, description="Fold feedback of this KPI only; None: every KPI's."
    )
    retrain_preset: Literal["cpu", "cpu-weights", "gpu", "tiny"] | None = Field(
        default=None,
        description=(
            "Fine-tuning preset of the candidate; None: the served checkpoint's own recipe "
            "(so that the comparison measures the new data, not a new recipe)."
        ),
    )
    retrain_confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description=(
            "Level of the paired bootstrap interval of the candidate's improvement in held-out "
            "loss; it is promoted only when the whole interval lies above 0."
        ),
    )
    retrain_bootstrap_resamples: int = Field(
        default=2000, ge=100, description="Bootstrap resamples of the held-out posts."
    )
    retrain_eval_posts: int = Field(
        default=256,
        ge=1,
        description=(
            "The newest this many posts of the test split (the most recent time window) are "
            "what both checkpoints are measured on (teacher-forced: no text is generated)."
        ),
    )
    retrain_min_eval_posts: int = Field(
        default=30,
        ge=1,
        description="Fewer held-out posts than this and the candidate is rejected unmeasured.",
    )
    retrain_window_days: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Measure only on held-out posts within this many days of the newest; None: the "
            "newest retrain_eval_posts of the test split, however old."
        ),
    )

    @model_validator(mode="after")
    def _scheduled_retrain_has_data(self) -> TrainerSettings:
        if self.retrain_interval_seconds is not None and self.dataset_dir is None:
            raise ValueError(
                "retrain_interval_seconds needs dataset_dir: the dataset feedback is folded into"
            )
        return self
