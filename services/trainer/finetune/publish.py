"""Publish a finished fine-tuning output as a BoigLLM checkpoint in the registry (design §3).

Only what serving needs goes in: the adapter weights and config, the tokenizer files and
``train_state.json``; optimizer checkpoints and the step log stay in the training folder. The
manifest pins the base model, the dataset and the hyper-parameters the adapter came from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from services.common.checkpoints import (
    ALLOWED_SUFFIXES,
    BOIGLLM_CHECKPOINT,
    KIND_BOIGLLM_LORA,
    BaseModelRef,
    CheckpointRef,
    CheckpointRejected,
    DatasetRef,
    JsonScalar,
    publish_checkpoint,
)
from services.common.hashing import file_sha256
from services.trainer.finetune.config import FinetuneConfig
from services.trainer.finetune.data import dataset_digest, resolve_dataset_dir
from services.trainer.finetune.train import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAIN_STATE
from services.trainer.ingest.dataset import MANIFEST as DATASET_MANIFEST

MODEL_MANIFEST = "manifest.json"
"""What ``make models`` writes into a prepared base folder (the describer's model_prep)."""
_REQUIRED = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRAIN_STATE)


def base_model_ref(base_model: Path) -> BaseModelRef:
    """The base folder's name, pinned by the sha256 of its manifest (``make models`` writes one,
    recording every file's digest) or, without one, of its config.json."""
    for candidate in (base_model / MODEL_MANIFEST, base_model / "config.json"):
        if candidate.is_file():
            return BaseModelRef(name=base_model.name, version=f"sha256:{file_sha256(candidate)}")
    raise CheckpointRejected(f"base model {base_model} has neither a manifest nor config.json")


def dataset_ref(dataset_dir: Path) -> DatasetRef:
    """The dataset version folder's manifest digest and its name (``v3``) as the version."""
    folder = resolve_dataset_dir(dataset_dir)
    manifest = folder / DATASET_MANIFEST
    if not manifest.is_file():
        raise CheckpointRejected(f"dataset {folder} has no {DATASET_MANIFEST}")
    return DatasetRef(manifest_sha256=dataset_digest(folder), version=folder.name)


def hyperparameters(config: FinetuneConfig) -> dict[str, JsonScalar]:
    """The config as JSON scalars (tuples joined with commas, paths as text)."""
    result: dict[str, JsonScalar] = {}
    for key, value in config.model_dump(mode="json").items():
        if isinstance(value, list):
            result[key] = ",".join(str(item) for item in value)
        elif value is None or isinstance(value, str | int | float | bool):
            result[key] = value
        else:
            result[key] = json.dumps(value, sort_keys=True)
    return result


def _metrics(out_dir: Path) -> dict[str, float]:
    state = json.loads((out_dir / TRAIN_STATE).read_text(encoding="utf-8"))
    metrics = {"train_loss": float(state["final_loss"])}
    if state.get("eval_loss") is not None:
        metrics["eval_loss"] = float(state["eval_loss"])
    return metrics


def publish_trained(
    out_dir: Path,
    registry_dir: Path,
    *,
    dataset_dir: Path,
    config: FinetuneConfig,
    name: str = BOIGLLM_CHECKPOINT,
    make_current: bool = True,
) -> CheckpointRef:
    """Publish the finished adapter in ``out_dir`` as a new version of ``name``; the pointer
    moves to it unless ``make_current`` is false."""
    missing = [file for file in _REQUIRED if not (out_dir / file).is_file()]
    if missing:
        raise CheckpointRejected(
            f"{out_dir} holds no finished adapter (missing {', '.join(missing)})"
        )
    files = sorted(
        path
        for path in out_dir.iterdir()
        if path.is_file() and not path.is_symlink() and path.suffix.lower() in ALLOWED_SUFFIXES
    )
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=out_dir) as staging:
        for path in files:
            shutil.copyfile(path, Path(staging) / path.name)
        return publish_checkpoint(
            registry_dir,
            name,
            Path(staging),
            kind=KIND_BOIGLLM_LORA,
            base_model=base_model_ref(config.base_model),
            data=dataset_ref(dataset_dir),
            hyperparameters=hyperparameters(config),
            metrics=_metrics(out_dir),
            make_current=make_current,
        )
