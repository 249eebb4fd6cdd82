"""One BoigSD training run against running services: what the training worker executes and
what `make train-sd` runs in the foreground (with its own services on loopback).

Tasks come from the dataset's training split and a describer, the reward from a scorer; the
run folder holds the checkpoints a killed run resumes from; the LoRA is published once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from services.common.checkpoints import (
    BOIGSD_CHECKPOINT,
    VERSIONS_DIR,
    BaseModelRef,
    CheckpointRef,
    new_version,
)
from services.common.clients import DescriberClient
from services.common.contracts import Context, RewardName
from services.common.model_folders import folder_version, read_sampling_defaults
from services.common.torch_device import resolve_device
from services.trainer.ddpo.config import DdpoConfig, preset
from services.trainer.ddpo.rewards import ScorerReward
from services.trainer.ddpo.run import TASKS_FILE, DdpoRun, publish_boigsd, train_boigsd
from services.trainer.ddpo.tasks import Task, build_tasks, training_contexts
from services.trainer.ddpo.train import EpochStats
from services.trainer.finetune.publish import dataset_ref

logger = logging.getLogger(__name__)

PUBLISHED_FILE = "published.json"


class BoigsdJob(BaseModel):
    """What an operator asks for: the parameters of one BoigSD run."""

    preset: str = Field(default="cpu", pattern=r"^(tiny|cpu|gpu)$")
    contexts: int = Field(default=32, ge=1, le=10_000)
    reward: RewardName = "match"
    epochs: int | None = Field(default=None, ge=1, le=100_000)
    guidance_scale: float | None = Field(
        default=None, ge=1.0, le=30.0, description="Else what the model folder recommends."
    )
    seed: int = Field(default=0, ge=0)
    publish: bool = True


@dataclass(frozen=True)
class Services:
    describer_url: str
    scorer_url: str


@dataclass(frozen=True)
class BoigsdOutcome:
    run: DdpoRun
    checkpoint: CheckpointRef | None


def config_for(job: BoigsdJob, model: Path) -> DdpoConfig:
    """The job's preset, sampling with the guidance the model folder recommends."""
    overrides: dict[str, Any] = {"seed": job.seed}
    guidance = read_sampling_defaults(model).guidance_scale
    if guidance is not None:
        overrides["guidance_scale"] = guidance
    if job.guidance_scale is not None:
        overrides["guidance_scale"] = job.guidance_scale
    if job.epochs is not None:
        overrides["epochs"] = job.epochs
    return preset(job.preset, **overrides)


def load_pipeline(model: Path, device: str = "auto") -> Any:
    """A diffusers SD pipeline from local safetensors only, in float32 (training)."""
    from diffusers import StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        model,
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_boigsd_job(
    job: BoigsdJob,
    *,
    model: Path,
    dataset: Path,
    services: Services,
    run_dir: Path,
    registry: Path,
    on_epoch: Callable[[EpochStats], None] | None = None,
    device: str = "auto",
) -> BoigsdOutcome:
    config = config_for(job, model)
    if (run_dir / TASKS_FILE).is_file():
        tasks = []  # a resumed run trains on the prompts it pinned: no describer needed
    else:
        contexts = training_contexts(dataset, limit=job.contexts, seed=job.seed)
        tasks = asyncio.run(_tasks(services.describer_url, contexts))
        logger.info("boigsd: %d training contexts; e.g. %r", len(tasks), tasks[0].prompt)
    reward = ScorerReward(services.scorer_url, reward=job.reward)
    try:
        run = train_boigsd(
            load_pipeline(model, device),
            config,
            tasks,
            reward,
            run_dir,
            base_model=model.name,
            on_epoch=on_epoch,
        )
    finally:
        reward.close()
    checkpoint = None
    if job.publish:
        checkpoint = _publish_once(run, registry, config, model, dataset)
    return BoigsdOutcome(run=run, checkpoint=checkpoint)


def _publish_once(
    run: DdpoRun, registry: Path, config: DdpoConfig, model: Path, dataset: Path
) -> CheckpointRef:
    """Publish the run's LoRA under a version chosen (and recorded) first, so a run killed
    anywhere in between, started again, finds its version and never publishes twice."""
    record = run.run_dir / PUBLISHED_FILE
    if record.is_file():
        version = json.loads(record.read_text(encoding="utf-8"))["version"]
    else:
        version = new_version()
        record.write_text(json.dumps({"version": version}) + "\n", encoding="utf-8")
    ref = CheckpointRef(BOIGSD_CHECKPOINT, version, _version_dir(registry, version))
    if ref.path.is_dir():
        return ref  # published before the kill; the pointer moved with it
    ref = publish_boigsd(
        run,
        registry,
        BOIGSD_CHECKPOINT,
        config=config,
        base_model=BaseModelRef(name=model.name, version=folder_version(model)),
        data=dataset_ref(dataset),
        version=version,
    )
    logger.info("boigsd: published %s to %s", ref.version, registry)
    return ref


def _version_dir(registry: Path, version: str) -> Path:
    return registry / BOIGSD_CHECKPOINT / VERSIONS_DIR / version


async def _tasks(describer_url: str, contexts: list[Context]) -> list[Task]:
    async with DescriberClient(describer_url, timeout=600) as describer:
        return await build_tasks(contexts, describer)
