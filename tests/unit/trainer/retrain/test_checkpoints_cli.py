"""`boig checkpoints list / promote / rollback / decisions`: one command moves the pointer,
each move is recorded, and a rollback without a version goes back to the one served before."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    BaseModelRef,
    DatasetRef,
    current_checkpoint,
    publish_checkpoint,
)
from services.common.db import Database
from services.common.retraining import RetrainLedger


def publish(registry: Path, tmp_path: Path, label: str, *, current: bool) -> str:
    source = tmp_path / f"out-{label}"
    source.mkdir()
    (source / "adapter_model.safetensors").write_bytes(label.encode())
    return publish_checkpoint(
        registry,
        "boigllm",
        source,
        kind=KIND_BOIGLLM_LORA,
        base_model=BaseModelRef(name="smollm2", version="sha256:1"),
        data=DatasetRef(manifest_sha256=label[0] * 64, version=f"v-{label}"),
        metrics={"train_loss": 0.5},
        make_current=current,
    ).version


def test_promote_then_roll_back_with_one_command_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "registry"
    database_url = f"sqlite:///{tmp_path / 'boig.db'}"
    monkeypatch.setenv("BOIG_TRAINER_REGISTRY", str(registry))
    monkeypatch.setenv("BOIG_TRAINER_DATABASE_URL", database_url)
    first = publish(registry, tmp_path, "a", current=True)
    second = publish(registry, tmp_path, "b", current=False)
    runner = CliRunner()

    listed = runner.invoke(app, ["checkpoints", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].startswith(f"  {second}") and lines[1].startswith(f"* {first}")
    assert "dataset v-a" in lines[1] and "train_loss 0.5000" in lines[1]

    promoted = runner.invoke(app, ["checkpoints", "promote", second, "--reason", "A/B winner"])
    assert promoted.exit_code == 0, promoted.output
    assert f"promote (operator)  {first} -> {second}" in promoted.output
    served = current_checkpoint(registry, "boigllm")
    assert served is not None and served.version == second

    rolled = runner.invoke(app, ["checkpoints", "rollback"])
    assert rolled.exit_code == 0, rolled.output
    assert f"rollback (operator)  {second} -> {first}" in rolled.output
    served = current_checkpoint(registry, "boigllm")
    assert served is not None and served.version == first

    again = runner.invoke(app, ["checkpoints", "rollback", first])
    assert again.exit_code == 1 and "current checkpoint already" in again.output

    decisions = runner.invoke(app, ["checkpoints", "decisions", "--details"])
    assert decisions.exit_code == 0, decisions.output
    assert decisions.output.index("rollback (operator)") < decisions.output.index("A/B winner")
    assert '"actor"' in decisions.output
    # The gateway reads what the commands recorded.
    recorded = RetrainLedger(Database(database_url)).versions("boigllm")
    assert recorded.current == first and len(recorded.items) == 2
