"""Publishing a finished fine-tune: a verifiable registry entry with only what serving needs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    CheckpointRejected,
    current_checkpoint,
    load_manifest,
)
from services.trainer.finetune.__main__ import app as cli
from services.trainer.finetune.config import FinetuneConfig, tiny_preset
from services.trainer.finetune.publish import publish_trained
from services.trainer.finetune.train import TrainResult, finetune


def _config(tiny_model_dir: Path) -> FinetuneConfig:
    base = tiny_preset(tiny_model_dir).model_dump()
    return FinetuneConfig.model_validate(
        {**base, "max_steps": 3, "eval_every": 3, "checkpoint_every": 3}
    )


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    return finetune(dataset_dir, tmp_path_factory.mktemp("run"), _config(tiny_model_dir))


def test_publish_writes_a_verified_entry_with_provenance(
    trained: TrainResult, tiny_model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    config = _config(tiny_model_dir)
    ref = publish_trained(trained.out_dir, tmp_path, dataset_dir=dataset_dir, config=config)

    assert current_checkpoint(tmp_path, "boigllm") == ref
    manifest = load_manifest(ref, verify=True)
    assert manifest.kind == KIND_BOIGLLM_LORA
    assert {"adapter_model.safetensors", "adapter_config.json", "train_state.json"} <= set(
        manifest.files
    )
    assert "tokenizer.json" in manifest.files
    # Optimizer checkpoints and the step log stay in the training folder.
    assert not any(name.startswith("checkpoints/") for name in manifest.files)
    assert "metrics.jsonl" not in manifest.files
    assert manifest.base_model.name == tiny_model_dir.name
    config_sha = hashlib.sha256((tiny_model_dir / "config.json").read_bytes()).hexdigest()
    assert manifest.base_model.version == f"sha256:{config_sha}"
    data_sha = hashlib.sha256((dataset_dir / "manifest.json").read_bytes()).hexdigest()
    assert manifest.data.manifest_sha256 == data_sha
    assert manifest.data.version == dataset_dir.name
    assert manifest.metrics["train_loss"] == pytest.approx(trained.final_loss)
    assert trained.eval_loss is not None
    assert manifest.metrics["eval_loss"] == pytest.approx(trained.eval_loss)
    assert manifest.hyperparameters["lora_r"] == config.lora_r
    assert manifest.hyperparameters["learning_rate"] == config.learning_rate
    assert "q_proj" in str(manifest.hyperparameters["lora_target_modules"])
    # Nothing was left behind in the training folder.
    assert not any(path.name.startswith(".publish-") for path in trained.out_dir.iterdir())


def test_publish_refuses_an_unfinished_output(
    tiny_model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointRejected, match="no finished adapter"):
        publish_trained(
            out, tmp_path / "registry", dataset_dir=dataset_dir, config=_config(tiny_model_dir)
        )
    assert current_checkpoint(tmp_path / "registry", "boigllm") is None


def test_cli_publish_option(
    trained: TrainResult, tiny_model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    # The finished run is re-used: the CLI resumes at max_steps and only writes and publishes.
    result = CliRunner().invoke(
        cli,
        [
            str(dataset_dir),
            "--out",
            str(trained.out_dir),
            "--preset",
            "tiny",
            "--base-model",
            str(tiny_model_dir),
            "--max-steps",
            "3",
            "--publish",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    ref = current_checkpoint(tmp_path, "boigllm")
    assert ref is not None
    assert f"published boigllm version {ref.version}" in result.output
    state = json.loads((ref.path / "train_state.json").read_text())
    assert state["step"] == 3
