"""One BoigSD training run against running services: what the training worker executes and
what `make train-sd` runs in the foreground (with its own services on loopback).

Tasks come from the dataset's training split and a describer, the reward from a scorer; the
run folder holds the checkpoints a killed run resumes from; the LoRA is published once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, model_validator

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
from services.common.processes import stop_process
from services.common.torch_device import resolve_device
from services.trainer.ddpo.config import DdpoConfig, preset
from services.trainer.ddpo.rewards import MixedReward, ScorerReward
from services.trainer.ddpo.run import (
    EVAL_TASKS_FILE,
    TASKS_FILE,
    DdpoRun,
    finished_run,
    pin_tasks,
    publish_boigsd,
    train_boigsd,
)
from services.trainer.ddpo.state import checkpointed_epoch, read_metrics
from services.trainer.ddpo.tasks import Task, build_tasks, training_contexts
from services.trainer.ddpo.train import EpochStats
from services.trainer.finetune.publish import dataset_ref

logger = logging.getLogger(__name__)

PUBLISHED_FILE = "published.json"
JOB_FILE = "job.json"
LAUNCH_POLL_SECONDS = 2.0
"""How often a multi-process run's launcher reads the epochs its main process logged."""


class BoigsdJob(BaseModel):
    """What an operator asks for: the parameters of one BoigSD run."""

    preset: str = Field(default="cpu", pattern=r"^(tiny|cpu|gpu)$")
    contexts: int = Field(default=32, ge=1, le=10_000)
    holdout: int = Field(
        default=16,
        ge=0,
        le=10_000,
        description=(
            "More training-split contexts, never trained on: the held-out prompts whose reward "
            "decides early stopping (0: judge on the training prompts)."
        ),
    )
    reward: RewardName = "match"
    faithfulness: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Weight w of the faithfulness term: the reward becomes (1 - w) x reward + w x match "
            "(match: the image shows the description its prompt was written from), a guard "
            "for the likelihood and contrastive rewards, which judge the KPI alone."
        ),
    )
    kl_coef: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        description="Weight of the KL penalty to the base model; else the preset's.",
    )
    epochs: int | None = Field(default=None, ge=1, le=100_000)
    lora_targets: str | None = Field(
        default=None,
        pattern=r"^(attention|all)$",
        description="UNet modules the LoRA adapts (attention or all); else the preset's.",
    )
    guidance_scale: float | None = Field(
        default=None, ge=1.0, le=30.0, description="Else what the model folder recommends."
    )
    seed: int = Field(default=0, ge=0)
    publish: bool = True
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Training processes, one per GPU (or CPU process in tests): more than 1 launches "
            "them with torch.distributed.run (services.trainer.ddpo.launch); each samples its "
            "share of an epoch and their gradients are averaged."
        ),
    )

    @model_validator(mode="after")
    def _faithfulness_needs_another_reward(self) -> BoigsdJob:
        if self.faithfulness and self.reward == "match":
            raise ValueError("the match reward is faithfulness already: leave faithfulness 0")
        return self


@dataclass(frozen=True)
class Services:
    describer_url: str
    scorer_url: str


@dataclass(frozen=True)
class BoigsdOutcome:
    run: DdpoRun
    checkpoint: CheckpointRef | None


def config_for(job: BoigsdJob, model: Path) -> DdpoConfig:
    """The job's preset, sampling with the guidance the model folder recommends and judging
    held-out prompts with its serving steps."""
    overrides: dict[str, Any] = {"seed": job.seed}
    served = read_sampling_defaults(model)
    if served.guidance_scale is not None:
        overrides["guidance_scale"] = served.guidance_scale
    if served.steps is not None:
        overrides["eval_steps"] = served.steps  # held-out images drawn as they are served
    if job.guidance_scale is not None:
        overrides["guidance_scale"] = job.guidance_scale
    if job.epochs is not None:
        overrides["epochs"] = job.epochs
    if job.kl_coef is not None:
        overrides["kl_coef"] = job.kl_coef
    if job.lora_targets is not None:
        overrides["lora_targets"] = job.lora_targets
    return preset(job.preset, **overrides)


def read_job(run_dir: Path) -> BoigsdJob | None:
    """The job a run folder was started for (``job.json``), so that whoever reads the run
    later (eval-sd) judges it with the reward it was trained on."""
    path = run_dir / JOB_FILE
    if not path.is_file():
        return None
    return BoigsdJob.model_validate_json(path.read_text(encoding="utf-8"))


PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_pipeline(
    model: Path, device: str | torch.device = "auto", *, mixed_precision: str = "no"
) -> Any:
    """A diffusers SD pipeline from local safetensors only, its frozen weights in the dtype
    of ``mixed_precision`` (float32 without: training on a CPU)."""
    from diffusers import StableDiffusionPipeline

    target = device if isinstance(device, torch.device) else resolve_device(device)
    pipe: Any = StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        model,
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=PRECISION_DTYPES[mixed_precision],
    ).to(target)
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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_FILE).write_text(job.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tasks: list[Task]
    eval_tasks: list[Task] | None
    if (run_dir / TASKS_FILE).is_file():
        # A resumed run trains and is judged on the prompts it pinned: no describer needed.
        tasks = []
        eval_tasks = [] if (run_dir / EVAL_TASKS_FILE).is_file() else None
    else:
        contexts = training_contexts(dataset, limit=job.contexts + job.holdout, seed=job.seed)
        if len(contexts) <= job.holdout:
            raise ValueError(
                f"{len(contexts)} training contexts leave none to train on after "
                f"{job.holdout} held out"
            )
        built = asyncio.run(_tasks(services.describer_url, contexts))
        # Contexts come round-robin over accounts, so the held-out tail covers every brand.
        cut = len(built) - job.holdout
        tasks, eval_tasks = built[:cut], (built[cut:] if job.holdout else None)
        logger.info(
            "boigsd: %d training contexts, %d held out; e.g. %r",
            len(tasks),
            job.holdout,
            tasks[0].prompt,
        )
    if job.processes > 1:
        pin_tasks(run_dir, tasks, eval_tasks)
        run = _launch(job, config, model, run_dir, services.scorer_url, device, on_epoch)
    else:
        reward = make_reward(job, services.scorer_url)
        try:
            run = train_boigsd(
                load_pipeline(model, device, mixed_precision=config.mixed_precision),
                config,
                tasks,
                reward,
                run_dir,
                base_model=model.name,
                on_epoch=on_epoch,
                eval_tasks=eval_tasks,
            )
        finally:
            reward.close()
    checkpoint = None
    if job.publish and run.best_epoch == 0:
        # Nothing beat the untrained adapter on the held-out prompts: publishing it would move
        # the pointer off a real BoigSD to the base model under BoigSD's name.
        logger.warning("boigsd: no evaluation beat epoch 0 in %s; nothing published", run_dir)
    elif job.publish:
        checkpoint = _publish_once(run, registry, config, model, dataset)
    return BoigsdOutcome(run=run, checkpoint=checkpoint)


def _launch(
    job: BoigsdJob,
    config: DdpoConfig,
    model: Path,
    run_dir: Path,
    scorer_url: str,
    device: str,
    on_epoch: Callable[[EpochStats], None] | None,
) -> DdpoRun:
    """Train on ``job.processes`` processes (``services.trainer.ddpo.launch`` under
    ``torch.distributed.run``) and wait, reporting each epoch the main one logs. Whatever
    stops the wait (a cancel raised by ``on_epoch``, a lost lease) stops the processes too;
    the run folder's last checkpoint is where a next attempt resumes."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={job.processes}",
        "-m",
        "services.trainer.ddpo.launch",
        f"--run-dir={run_dir}",
        f"--model={model}",
        f"--scorer-url={scorer_url}",
        f"--device={device}",
    ]
    reported = checkpointed_epoch(run_dir)
    logger.info("boigsd: launching %d training processes", job.processes)
    process = subprocess.Popen(command)
    try:
        while True:
            finished = process.poll() is not None
            for row in read_metrics(run_dir):
                if row["epoch"] > reported:
                    reported = row["epoch"]
                    if on_epoch is not None:
                        on_epoch(EpochStats(**row))
            if finished:
                break
            time.sleep(LAUNCH_POLL_SECONDS)
    finally:
        stop_process(process, grace=30)
    if process.returncode:
        raise RuntimeError(f"the {job.processes} DDPO processes exited with {process.returncode}")
    return finished_run(run_dir, config, trained_epochs=len(read_metrics(run_dir)))


def make_reward(job: BoigsdJob, scorer_url: str) -> ScorerReward | MixedReward:
    kpi = ScorerReward(scorer_url, reward=job.reward)
    if not job.faithfulness:
        return kpi
    faithful = ScorerReward(scorer_url, reward="match")
    return MixedReward([(1.0 - job.faithfulness, kpi), (job.faithfulness, faithful)])


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
