"""A DDPO run resumes where it was killed and ends with the same weights; it publishes a
LoRA the generator's format reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from services.common.boigsd_lora import LORA_WEIGHTS_FILE, read_boigsd_lora_config
from services.common.checkpoints import (
    KIND_BOIGSD_LORA,
    BaseModelRef,
    DatasetRef,
    current_checkpoint,
    load_manifest,
)
from services.common.contracts import Context
from services.trainer.ddpo.config import preset
from services.trainer.ddpo.rewards import InProcessReward
from services.trainer.ddpo.run import publish_boigsd, read_evaluation, train_boigsd
from services.trainer.ddpo.state import checkpoints, read_metrics
from services.trainer.ddpo.tasks import Task
from tests.unit.trainer.ddpo.test_ddpo_train import TASKS, brightness, load

CONFIG = preset("tiny", epochs=3, learning_rate=1e-2, clip_range=1e-2)


class Killed(Exception):
    pass


def lora_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "lora" / LORA_WEIGHTS_FILE))


def test_a_killed_run_resumes_and_ends_with_the_same_weights(
    tiny_sd_dir: Path, tmp_path: Path
) -> None:
    reward = InProcessReward(brightness)
    straight = train_boigsd(
        load(tiny_sd_dir), CONFIG, TASKS, reward, tmp_path / "straight", base_model="tiny"
    )

    def kill_after_first(stats: object) -> None:
        raise Killed

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Killed):
        train_boigsd(
            load(tiny_sd_dir),
            CONFIG,
            TASKS,
            reward,
            interrupted,
            base_model="tiny",
            on_epoch=kill_after_first,
        )
    assert [p.name for p in checkpoints(interrupted)] == ["epoch-1"]
    # Started again with other tasks: the run keeps the ones it began with.
    resumed = train_boigsd(
        load(tiny_sd_dir), CONFIG, TASKS[:1], reward, interrupted, base_model="tiny"
    )

    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert [row["reward_mean"] for row in resumed.history] == [
        row["reward_mean"] for row in straight.history
    ]
    ours, theirs = lora_weights(interrupted), lora_weights(tmp_path / "straight")
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert [p.name for p in checkpoints(interrupted)] == ["epoch-2", "epoch-3"]
    assert read_metrics(interrupted) == resumed.history
    # Judged on fixed prompts and seeds before training and at the end, the same both ways.
    evaluations = read_evaluation(interrupted)
    assert [row["epoch"] for row in evaluations] == [0, 3]
    assert evaluations == read_evaluation(tmp_path / "straight")
    assert set(evaluations[0]["tasks"]) == {task.key for task in TASKS}


def resume_refused(tiny_sd_dir: Path, run_dir: Path, edit_state: bool, **changes: object) -> str:
    """Train one epoch, optionally mark its checkpoint as state format 1, resume with the
    preset changed by ``changes``: the refusal's message."""
    reward = InProcessReward(brightness)
    train_boigsd(
        load(tiny_sd_dir), preset("tiny", epochs=1), TASKS, reward, run_dir, base_model="t"
    )
    if edit_state:
        state_file = checkpoints(run_dir)[-1] / "state.json"
        state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "format": 1}))
    with pytest.raises(ValueError) as refused:
        config = preset("tiny", epochs=2, **changes)  # type: ignore[arg-type]
        train_boigsd(load(tiny_sd_dir), config, TASKS, reward, run_dir, base_model="t")
    return str(refused.value)


def test_a_checkpoint_of_other_hyper_parameters_is_refused(
    tiny_sd_dir: Path, tmp_path: Path
) -> None:
    assert "other hyper-parameters" in resume_refused(
        tiny_sd_dir, tmp_path, False, learning_rate=1.0
    )


def test_a_checkpoint_of_the_older_state_format_is_refused(
    tiny_sd_dir: Path, tmp_path: Path
) -> None:
    # Format 1 kept one sampling generator's state; this code draws each epoch from (seed,
    # epoch, process), so resuming it would silently follow another stream.
    message = resume_refused(tiny_sd_dir, tmp_path, True)
    assert "format 1" in message and "new run folder" in message


def test_the_published_lora_carries_its_run(tiny_sd_dir: Path, tmp_path: Path) -> None:
    one = preset("tiny", epochs=1)
    run = train_boigsd(
        load(tiny_sd_dir),
        one,
        TASKS,
        InProcessReward(brightness),
        tmp_path / "run",
        base_model="tiny",
    )
    registry = tmp_path / "registry"
    ref = publish_boigsd(
        run,
        registry,
        "boigsd",
        config=one,
        base_model=BaseModelRef(name="tiny-sd", version="a" * 40),
        data=DatasetRef(manifest_sha256="b" * 64, version="v1"),
    )
    assert current_checkpoint(registry, "boigsd") == ref
    manifest = load_manifest(ref)
    assert manifest.kind == KIND_BOIGSD_LORA
    assert manifest.hyperparameters["learning_rate"] == one.learning_rate
    assert "reward_mean" in manifest.metrics
    config = read_boigsd_lora_config(ref.path)
    assert config is not None and config.rank == one.lora_rank


class Declining:
    """A reward that falls with every call: the run's best held-out reward is its first
    evaluation, before any training."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: torch.Tensor, tasks: object) -> np.ndarray:
        self.calls += 1
        return np.full(images.shape[0], -float(self.calls))


def test_early_stopping_publishes_the_best_evaluated_lora(
    tiny_sd_dir: Path, tmp_path: Path
) -> None:
    config = preset("tiny", epochs=10, eval_every=1, patience=2, learning_rate=1e-2)
    held_out = [
        Task(key=f"h{i}", prompt=p, context=Context(account="acme"))
        for i, p in enumerate(["a green poster", "winter sale"])
    ]
    run = train_boigsd(
        load(tiny_sd_dir),
        config,
        TASKS,
        InProcessReward(Declining()),
        tmp_path,
        base_model="tiny",
        eval_tasks=held_out,
    )

    assert run.stopped_early and run.best_epoch == 0
    assert [row["epoch"] for row in run.history] == [1, 2]  # two evaluations past the best
    evaluations = read_evaluation(tmp_path)
    assert [row["epoch"] for row in evaluations] == [0, 1, 2]
    assert set(evaluations[0]["tasks"]) == {"h0", "h1"}  # judged on the held-out prompts
    snapshots = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert snapshots == ["epoch-0", "epoch-1", "epoch-2"]
    best = load_file(str(tmp_path / "snapshots" / "epoch-0" / LORA_WEIGHTS_FILE))
    published = lora_weights(tmp_path)
    assert best.keys() == published.keys()
    assert all(torch.equal(best[name], published[name]) for name in best)
    last = load_file(str(tmp_path / "snapshots" / "epoch-2" / LORA_WEIGHTS_FILE))
    assert any(not torch.equal(last[name], best[name]) for name in best)

    # Started again, the spent patience is read back: nothing more is trained.
    again = train_boigsd(
        load(tiny_sd_dir),
        config,
        [],
        InProcessReward(Declining()),
        tmp_path,
        base_model="tiny",
        eval_tasks=[],
    )
    assert again.history == run.history and again.best_epoch == 0


def test_a_run_killed_between_evaluating_and_checkpointing_evaluates_that_epoch_again(
    tiny_sd_dir: Path, tmp_path: Path
) -> None:
    # Best at epoch 0, patience 2: the run stops once epochs 1 and 2 are evaluated.
    config = preset("tiny", epochs=5, eval_every=1, patience=2, learning_rate=1e-2)
    run = train_boigsd(
        load(tiny_sd_dir), config, TASKS, InProcessReward(Declining()), tmp_path, base_model="t"
    )
    assert [row["epoch"] for row in run.history] == [1, 2]
    # As if killed after epoch 2 was evaluated and snapshotted, before its checkpoint.
    shutil.rmtree(checkpoints(tmp_path)[-1])
    shutil.rmtree(tmp_path / "lora")

    resumed = train_boigsd(
        load(tiny_sd_dir), config, [], InProcessReward(Declining()), tmp_path, base_model="t"
    )

    # Epoch 2's old evaluation does not count: the epoch is trained and judged again.
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert [row["epoch"] for row in read_evaluation(tmp_path)] == [0, 1, 2]
    assert resumed.best_epoch == 0 and resumed.stopped_early
