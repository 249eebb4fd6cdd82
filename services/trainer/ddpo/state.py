"""DDPO checkpoints for resuming a run: the LoRA, the optimizer and the advantage buffers, as
safetensors and JSON (never pickle). The sampling randomness needs no state: each epoch's is
drawn from (seed, epoch, process).

A run folder holds ``checkpoints/epoch-<n>`` (each written whole under a temporary name, then
renamed) and ``metrics.jsonl`` (one line per epoch). A run that is killed and started again
continues from its newest checkpoint and ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from services.common.staged_folders import staged_folder
from services.trainer.ddpo.config import DdpoConfig
from services.trainer.ddpo.train import DdpoTrainer, EpochStats
from services.trainer.training_state import optimizer_from_safe, optimizer_to_safe

CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
_LORA_FILE = "lora.safetensors"
_OPTIMIZER_FILE = "optimizer.safetensors"
_STATE_FILE = "state.json"
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
STATE_FORMAT = 2
"""2: no sampling RNG state (format 1 kept one generator's, which a resumed run of this code
would not follow)."""


def save_checkpoint(trainer: DdpoTrainer, run_dir: Path, *, keep: int = 2) -> Path:
    """Write the trainer's state after its current epoch; keep the ``keep`` newest."""
    out = run_dir / CHECKPOINTS_DIR / f"epoch-{trainer.epoch}"
    tensors, groups = optimizer_to_safe(trainer.optimizer)
    lora = {
        name: parameter.detach().contiguous()
        for name, parameter in trainer.pipe.unet.named_parameters()
        if parameter.requires_grad
    }
    state = {
        "format": STATE_FORMAT,
        "epoch": trainer.epoch,
        "config": trainer.config.hyperparameters(),
        "advantages": trainer.advantages.state(),
        "optimizer_groups": groups,
    }
    with staged_folder(out) as staging:
        save_file(lora, str(staging / _LORA_FILE))
        save_file(tensors, str(staging / _OPTIMIZER_FILE))
        (staging / _STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return out


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def checkpointed_epoch(run_dir: Path) -> int:
    """The epoch of the run's newest complete checkpoint (0: none yet)."""
    found = checkpoints(run_dir)
    match = EPOCH_DIR.match(found[-1].name) if found else None
    return int(match.group(1)) if match else 0


def load_checkpoint(trainer: DdpoTrainer, checkpoint: Path) -> None:
    """Put ``trainer`` back where it was when ``checkpoint`` was written."""
    state: dict[str, Any] = json.loads((checkpoint / _STATE_FILE).read_text(encoding="utf-8"))
    if state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{checkpoint}: DDPO state format {state.get('format')}, this code resumes "
            f"{STATE_FORMAT} only; start a new run folder"
        )
    # The number of epochs may change: a finished run can be extended, a long one cut short.
    if _without_epochs(state["config"]) != _without_epochs(trainer.config.hyperparameters()):
        raise ValueError(
            f"{checkpoint} was written with other hyper-parameters; start a new run folder"
        )
    lora = load_file(str(checkpoint / _LORA_FILE))
    parameters = dict(trainer.pipe.unet.named_parameters())
    if set(lora) != {name for name, p in parameters.items() if p.requires_grad}:
        raise ValueError(f"{checkpoint}: its LoRA does not match the trainer's")
    for name, tensor in lora.items():
        parameters[name].data.copy_(tensor)
    trainer.optimizer.load_state_dict(
        optimizer_from_safe(load_file(str(checkpoint / _OPTIMIZER_FILE)), state["optimizer_groups"])
    )
    trainer.epoch = int(state["epoch"])
    trainer.advantages.restore(state["advantages"])


RESUMABLE_CHANGES = frozenset({"epochs", "patience", "eval_every", "eval_seeds"})
"""Settings a run may resume under with other values: when it stops and how it is judged,
not what a trained epoch does."""


def _without_epochs(config: dict[str, Any]) -> dict[str, Any]:
    # A setting added after the run started reads as its default (what the run trained with).
    defaults = DdpoConfig().hyperparameters()
    return {
        key: config.get(key, defaults.get(key))
        for key in sorted(set(config) | set(defaults))
        if key not in RESUMABLE_CHANGES
    }


def append_metrics(run_dir: Path, stats: EpochStats) -> None:
    with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(stats)) + "\n")


def read_metrics(run_dir: Path, *, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
    rows = read_jsonl(run_dir / METRICS_FILE)
    return [row for row in rows if up_to_epoch is None or row["epoch"] <= up_to_epoch]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a run folder's JSON-lines file (none when it is not written yet)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Forget epochs after ``epoch`` (a run killed after logging, before checkpointing)."""
    rows = read_metrics(run_dir, up_to_epoch=epoch)
    (run_dir / METRICS_FILE).write_text(
        "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8"
    )
