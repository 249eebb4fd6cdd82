"""A retrain as the training worker runs it: its parameters (a run's params), the plan its
settings make, and the periodic task that queues one."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from services.common.clients import FeaturizerClient
from services.common.db import Database
from services.common.errors import BoigError
from services.common.feedback import FeedbackStore
from services.common.leases import utcnow
from services.common.retraining import RetrainLedger
from services.common.storage import open_artifact_store
from services.trainer.finetune.config import PRESETS
from services.trainer.finetune.train import StepReport
from services.trainer.ingest.featurize import Featurize, HttpFeaturizer
from services.trainer.retrain.compare import EvaluationPolicy
from services.trainer.retrain.fold import FoldScope
from services.trainer.retrain.pipeline import RetrainOutcome, RetrainPlan, Stage, retrain
from services.trainer.settings import TrainerSettings

if TYPE_CHECKING:
    from services.trainer.runs import TrainingStore

logger = logging.getLogger(__name__)

RETRAIN = "boigllm-retrain"
"""The training run kind of a BoigLLM retrain."""


class RetrainJob(BaseModel):
    """A retrain's parameters beyond the worker's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["cpu", "cpu-weights", "gpu", "tiny"] | None = Field(
        default=None,
        description="Fine-tuning preset; None: the settings' retrain_preset, else the served "
        "checkpoint's own recipe.",
    )
    max_steps: int | None = Field(default=None, ge=2, description="Override the preset's.")
    force: bool = Field(
        default=False,
        description="Train and decide even when nothing is new since the last decision.",
    )
    scheduled: bool = Field(default=False, description="Queued by the periodic task.")


def retrain_plan(settings: TrainerSettings, job: RetrainJob) -> RetrainPlan:
    if settings.dataset_dir is None:
        raise BoigError("BOIG_TRAINER_DATASET_DIR is not set: no dataset to fold feedback into")
    preset = job.preset or settings.retrain_preset
    config = PRESETS[preset](settings.llm_base_model) if preset is not None else None
    if config is not None and job.max_steps is not None:
        warmup = min(config.warmup_steps, job.max_steps - 1)
        config = config.model_copy(update={"max_steps": job.max_steps, "warmup_steps": warmup})
    return RetrainPlan(
        registry=settings.registry,
        dataset=settings.dataset_dir,
        base_model=settings.llm_base_model,
        runs_root=settings.runs_root,
        scope=FoldScope(
            accounts=tuple(settings.retrain_accounts) if settings.retrain_accounts else None,
            owners=(
                tuple(settings.retrain_trusted_keys)
                if settings.retrain_trusted_keys is not None
                else None
            ),
            kpi_name=settings.retrain_kpi_name,
        ),
        policy=evaluation_policy(settings),
        config=config,
        history_path=settings.history_path,
        force=job.force,
    )


def evaluation_policy(settings: TrainerSettings) -> EvaluationPolicy:
    return EvaluationPolicy(
        confidence=settings.retrain_confidence,
        resamples=settings.retrain_bootstrap_resamples,
        max_posts=settings.retrain_eval_posts,
        min_posts=settings.retrain_min_eval_posts,
        window_days=settings.retrain_window_days,
        device=settings.device,
    )


def run_retrain_job(
    job: RetrainJob,
    settings: TrainerSettings,
    *,
    database: Database,
    run_id: str | None = None,
    featurizer_url: Callable[[], str] | None = None,
    on_stage: Callable[[Stage], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> RetrainOutcome:
    """One retrain with the worker's settings: feedback from ``database`` (the gateway's) and
    the artifact store, images described by the featurizer at ``featurizer_url()`` (default:
    the settings'), reached only when there are images to describe."""
    plan = retrain_plan(settings, job)

    async def run() -> RetrainOutcome:
        async with AsyncExitStack() as stack:

            async def connect() -> Featurize:
                url = featurizer_url() if featurizer_url is not None else settings.featurizer_url
                client = FeaturizerClient(url, timeout=600.0)
                stack.push_async_callback(client.aclose)
                return await HttpFeaturizer.connect(client)

            return await retrain(
                plan=plan,
                store=FeedbackStore(database),
                artifacts=open_artifact_store(settings),
                ledger=RetrainLedger(database),
                featurizer=connect,
                run_id=run_id,
                on_stage=on_stage,
                on_step=on_step,
            )

    return asyncio.run(run())


def scheduled_run_id(interval_seconds: float, now_seconds: float) -> str:
    """The id of the scheduled retrain of the interval ``now_seconds`` falls in: every
    worker's scheduler names the same run, so the interval gets one however many ask."""
    slot = math.floor(now_seconds / interval_seconds)
    return f"retrain-{slot:010d}"[:32]


def schedule_retrain(store: TrainingStore, settings: TrainerSettings) -> str | None:
    """Queue this interval's retrain unless one is queued or running already; its id, or
    None when nothing was queued (the caller sends the task)."""
    interval = settings.retrain_interval_seconds
    if interval is None:
        return None
    if store.active(RETRAIN):
        return None
    run_id = scheduled_run_id(interval, utcnow().timestamp())
    try:
        store.submit(RETRAIN, RetrainJob(scheduled=True).model_dump(mode="json"), run_id=run_id)
    except IntegrityError:
        return None  # another worker queued this interval's run
    logger.info("queued scheduled retrain %s", run_id)
    return run_id
