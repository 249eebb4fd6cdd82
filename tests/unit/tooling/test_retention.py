"""`boig prune` keeps what is served and the newest versions, and deletes the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    BaseModelRef,
    DatasetRef,
    current_checkpoint,
    list_versions,
    publish_checkpoint,
    rollback,
)
from services.common.settings import checkpoint_registry


def publish(registry: Path, source: Path, seed: int) -> str:
    source.mkdir(parents=True)
    (source / "adapter_config.json").write_text(json.dumps({"seed": seed}))
    return publish_checkpoint(
        registry,
        "boigllm",
        source,
        kind=KIND_BOIGLLM_LORA,
        base_model=BaseModelRef(name="base", version="a" * 40),
        data=DatasetRef(manifest_sha256="b" * 64, version="v1"),
    ).version


def test_prune_deletes_old_versions_but_never_what_is_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BOIG_HOME", str(home))
    registry = checkpoint_registry(home)
    versions = [publish(registry, tmp_path / f"out{i}", i) for i in range(4)]
    rollback(registry, "boigllm", versions[1])
    dataset = home / "datasets" / "world-seed0"
    for number in (1, 2, 3):
        (dataset / f"v{number}").mkdir(parents=True)
    (dataset / "latest").write_text("v3\n")

    result = CliRunner().invoke(app, ["prune", "--checkpoints-keep", "1", "--datasets-keep", "1"])

    assert result.exit_code == 0, result.output
    assert "checkpoint boigllm: deleted 2 versions" in result.output
    assert "dataset world-seed0: deleted 2 versions (v1, v2)" in result.output
    kept = [ref.version for ref in list_versions(registry, "boigllm")]
    assert sorted(kept) == sorted([versions[1], versions[3]])
    current = current_checkpoint(registry, "boigllm")
    assert current is not None and current.version == versions[1]
    assert sorted(p.name for p in dataset.iterdir()) == ["latest", "v3"]
    again = CliRunner().invoke(app, ["prune"])
    assert again.exit_code == 0 and "nothing to delete" in again.output
