"""Preparing the default model: found in the installed package, converted once, atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from services.describer import model_prep


def test_the_gguf_is_found_in_the_installed_package() -> None:
    path = model_prep.smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_prepared_folder_is_a_safetensors_model_with_a_manifest(smollm2_dir: Path) -> None:
    assert (smollm2_dir / "model.safetensors").is_file()
    assert (smollm2_dir / "tokenizer.json").is_file()
    manifest = json.loads((smollm2_dir / "manifest.json").read_text())
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert {"transformers", "torch", "gguf"} <= set(manifest["versions"])
    assert "model.safetensors" in manifest["files"]
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model: loads without gguf


def test_a_second_call_returns_at_once(smollm2_dir: Path) -> None:
    started = time.perf_counter()
    assert model_prep.prepare_smollm2(smollm2_dir) == smollm2_dir
    assert time.perf_counter() - started < 1.0


def test_a_failed_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a gguf file")
    target = tmp_path / "models" / "smollm2"
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader raises
        model_prep.prepare_smollm2(target, gguf_path=bogus)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no half-written staging folder either


def test_cli_prepares_into_the_given_folder(smollm2_dir: Path) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(model_prep.cli, ["--out", str(smollm2_dir)])
    assert result.exit_code == 0, result.output
    assert str(smollm2_dir) in result.output
