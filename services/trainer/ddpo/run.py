"""A whole DDPO run in a run folder: resumable, logged per epoch, ending in a BoigSD LoRA
that ``publish_boigsd`` puts in the checkpoint registry for the generator."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from services.common.boigsd_lora import save_boigsd_lora
from services.common.checkpoints import (
    KIND_BOIGSD_LORA,
    BaseModelRef,
    CheckpointRef,
    DatasetRef,
    publish_checkpoint,
)
from services.common.contracts import Context
from services.common.staged_folders import staged_folder
from services.trainer.ddpo.config import DdpoConfig
from services.trainer.ddpo.rewards import Reward
from services.trainer.ddpo.state import (
    EPOCH_DIR,
    append_metrics,
    checkpoints,
    load_checkpoint,
    read_jsonl,
    read_metrics,
    save_checkpoint,
    truncate_metrics,
)
from services.trainer.ddpo.tasks import Task
from services.trainer.ddpo.train import DdpoTrainer, EpochStats

logger = logging.getLogger(__name__)

TASKS_FILE = "tasks.json"
EVAL_TASKS_FILE = "eval_tasks.json"
SNAPSHOTS_DIR = "snapshots"
EVALUATION_FILE = "evaluation.jsonl"
EVAL_SEED_BASE = 1_000_000
"""Evaluation seeds start here, apart from the seeds the training draws."""
LORA_DIR = "lora"


@dataclass(frozen=True)
class DdpoRun:
    run_dir: Path
    lora_dir: Path
    history: list[dict[str, Any]]
    """One row per epoch (``EpochStats`` fields)."""
    best_epoch: int | None = None
    """The evaluated epoch whose LoRA ``lora_dir`` holds under early stopping (None: the
    last epoch's, without it)."""
    stopped_early: bool = False


def train_boigsd(
    pipe: Any,
    config: DdpoConfig,
    tasks: Sequence[Task],
    reward: Reward,
    run_dir: Path,
    *,
    base_model: str,
    on_epoch: Callable[[EpochStats], None] | None = None,
    eval_tasks: Sequence[Task] | None = None,
    accelerator: Accelerator | None = None,
) -> DdpoRun:
    """Train, or resume the run in ``run_dir``, until ``config.epochs`` or early stopping;
    save the LoRA.

    The first start writes ``tasks.json`` (and ``eval_tasks.json``): a resumed run trains and
    is judged on the same prompts even if the describer that wrote them has moved on.
    ``eval_tasks`` (default: the training tasks) are judged with fixed seeds before training
    and every ``config.eval_every`` epochs (``evaluation.jsonl``), and the LoRA of each
    evaluated epoch is kept in ``snapshots/epoch-<n>`` (the efficacy report's curves). With
    ``config.patience``, the run stops that many evaluations after its best held-out reward
    and its LoRA is the best epoch's.

    Launched on several processes (``accelerator``), every process trains; the main one alone
    writes the run folder, and the others wait for it before they read it.
    """
    trainer = DdpoTrainer(pipe, config, reward, accelerator=accelerator)
    main = trainer.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        pin_tasks(run_dir, tasks, eval_tasks)
    trainer.accelerator.wait_for_everyone()
    tasks = read_tasks(run_dir / TASKS_FILE)
    judged = (
        read_tasks(run_dir / EVAL_TASKS_FILE) if (run_dir / EVAL_TASKS_FILE).is_file() else tasks
    )
    found = checkpoints(run_dir)
    if found:
        load_checkpoint(trainer, found[-1])
        logger.info("resuming %s from epoch %d", run_dir, trainer.epoch)
    trainer.accelerator.wait_for_everyone()  # every process read the checkpoint first
    if main:
        truncate_metrics(run_dir, trainer.epoch)
        _forget_evaluations_after(run_dir, trainer.epoch)
    started_at = trainer.epoch
    seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + config.eval_seeds))

    def evaluate() -> None:
        rewards = trainer.evaluate(judged, seeds=seeds)
        if main:
            append_evaluation(run_dir, trainer.epoch, rewards, judged, seeds)
            _snapshot(pipe, run_dir / SNAPSHOTS_DIR / f"epoch-{trainer.epoch}", base_model)

    if trainer.epoch == 0 and config.eval_every:
        evaluate()
    trainer.accelerator.wait_for_everyone()
    while trainer.epoch < config.epochs and not _patience_spent(run_dir, config):
        stats = trainer.run_epoch(tasks)
        if main:
            append_metrics(run_dir, stats)
        if config.eval_every and (
            trainer.epoch % config.eval_every == 0 or trainer.epoch == config.epochs
        ):
            evaluate()
        if main:
            save_checkpoint(trainer, run_dir)
            if on_epoch is not None:
                on_epoch(stats)
        # The others read evaluation.jsonl (patience) only once the main process wrote it.
        trainer.accelerator.wait_for_everyone()
    run = finished_run(run_dir, config, trained_epochs=trainer.epoch)
    if main:
        if trainer.epoch > started_at and run.lora_dir.exists():
            shutil.rmtree(run.lora_dir)  # a finished run extended: its LoRA is rebuilt below
        if not run.lora_dir.exists():
            if run.best_epoch is not None:
                # Copied whole under a temporary name: a kill mid-copy leaves no half LoRA.
                with staged_folder(run.lora_dir) as staging:
                    snapshot = run_dir / SNAPSHOTS_DIR / f"epoch-{run.best_epoch}"
                    shutil.copytree(snapshot, staging, dirs_exist_ok=True)
            else:
                save_boigsd_lora(pipe.unet, run.lora_dir, base_model=base_model)
    trainer.accelerator.wait_for_everyone()
    return run


def finished_run(run_dir: Path, config: DdpoConfig, *, trained_epochs: int) -> DdpoRun:
    """What a run folder holds once its run ended (read back by whoever launched it)."""
    return DdpoRun(
        run_dir=run_dir,
        lora_dir=run_dir / LORA_DIR,
        history=read_metrics(run_dir),
        best_epoch=best_evaluated_epoch(run_dir) if config.patience else None,
        stopped_early=trained_epochs < config.epochs,
    )


def pin_tasks(run_dir: Path, tasks: Sequence[Task], eval_tasks: Sequence[Task] | None) -> None:
    """Write ``tasks.json`` (and ``eval_tasks.json``) unless a first start did already."""
    for path, pinned in ((run_dir / TASKS_FILE, tasks), (run_dir / EVAL_TASKS_FILE, eval_tasks)):
        if pinned is None or path.is_file():
            continue
        rows = [
            {**asdict(task), "context": task.context.model_dump(mode="json")} for task in pinned
        ]
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")


def read_tasks(path: Path) -> list[Task]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [
        Task(key=row["key"], prompt=row["prompt"], context=Context.model_validate(row["context"]))
        for row in rows
    ]


def best_evaluated_epoch(run_dir: Path) -> int | None:
    """The evaluated epoch with the highest held-out reward (the earliest of ties)."""
    rows = read_evaluation(run_dir)
    if not rows:
        return None
    return int(max(rows, key=lambda row: (row["reward_mean"], -row["epoch"]))["epoch"])


def _patience_spent(run_dir: Path, config: DdpoConfig) -> bool:
    """True once ``patience`` evaluations have passed without beating the best one. Read from
    ``evaluation.jsonl``, so a resumed run stops where the uninterrupted one would."""
    if not config.patience:
        return False
    epochs = [int(row["epoch"]) for row in read_evaluation(run_dir)]
    best = best_evaluated_epoch(run_dir)
    return best is not None and sum(epoch > best for epoch in epochs) >= config.patience


def _forget_evaluations_after(run_dir: Path, epoch: int) -> None:
    """Drop evaluations (and their snapshots) of epochs after the checkpoint a run resumes
    from: a run killed after evaluating an epoch, before checkpointing it, trains that epoch
    again, and must not count the old evaluation against its patience."""
    path = run_dir / EVALUATION_FILE
    rows = read_jsonl(path)
    if any(row["epoch"] > epoch for row in rows):
        kept = [json.dumps(row) for row in rows if row["epoch"] <= epoch]
        path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    for snapshot_epoch, folder in snapshots(run_dir):
        if snapshot_epoch > epoch:
            shutil.rmtree(folder)


def snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's evaluated LoRAs, ``(epoch, folder)``, oldest first."""
    folder = run_dir / SNAPSHOTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_DIR.match(p.name))]
    return sorted(found)


def _snapshot(pipe: Any, out_dir: Path, base_model: str) -> None:
    # An epoch evaluated again after a kill (evaluated, not yet checkpointed) replaces its
    # snapshot: the weights are the same, the folder may be half-written.
    if out_dir.exists():
        shutil.rmtree(out_dir)
    save_boigsd_lora(pipe.unet, out_dir, base_model=base_model)


def publish_boigsd(
    run: DdpoRun,
    registry: Path,
    name: str,
    *,
    config: DdpoConfig,
    base_model: BaseModelRef,
    data: DatasetRef,
    version: str | None = None,
) -> CheckpointRef:
    """The run's LoRA as a new registry version (``version``, else a new one), the pointer
    moved once it is complete."""
    # The metrics describe the published weights: the best evaluated epoch's under early
    # stopping, else the last epoch's.
    epoch = run.best_epoch if run.best_epoch is not None else len(run.history)
    rows = [row for row in run.history if row["epoch"] == epoch]
    row = rows[0] if rows else {}
    metrics: dict[str, float] = {
        key: float(row[key]) for key in ("reward_mean", "reward_std", "approx_kl") if key in row
    }
    metrics["published_epoch"] = float(epoch)
    metrics["trained_epochs"] = float(len(run.history))
    if run.history:
        metrics["reward_mean_first_epoch"] = float(run.history[0]["reward_mean"])
    evaluations = read_evaluation(run.run_dir)
    if evaluations:
        metrics["heldout_reward_first"] = float(evaluations[0]["reward_mean"])
        published = [r for r in evaluations if r["epoch"] == epoch]
        if published:
            metrics["heldout_reward_published"] = float(published[0]["reward_mean"])
    metrics["stopped_early"] = float(run.stopped_early)
    return publish_checkpoint(
        registry,
        name,
        run.lora_dir,
        kind=KIND_BOIGSD_LORA,
        base_model=base_model,
        data=data,
        hyperparameters=config.hyperparameters(),
        metrics=metrics,
        version=version,
    )


def append_evaluation(
    run_dir: Path, epoch: int, rewards: Any, tasks: Sequence[Task], seeds: Sequence[int]
) -> None:
    """One line per evaluation: the mean reward and each task's mean over its seeds."""
    per_task = {
        task.key: float(sum(rewards[i * len(seeds) : (i + 1) * len(seeds)]) / len(seeds))
        for i, task in enumerate(tasks)
    }
    row = {"epoch": epoch, "reward_mean": float(sum(rewards) / len(rewards)), "tasks": per_task}
    path = run_dir / EVALUATION_FILE
    kept = [json.dumps(old) for old in read_jsonl(path) if old["epoch"] < epoch]
    path.write_text("".join(f"{line}\n" for line in [*kept, json.dumps(row)]), encoding="utf-8")
    logger.info("evaluation at epoch %d: reward %.4f", epoch, row["reward_mean"])


def read_evaluation(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / EVALUATION_FILE)
