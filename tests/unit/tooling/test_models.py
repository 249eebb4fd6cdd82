"""Model preparation respects models the operator names: found, never rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.tooling.models import ModelMissing, prepare_all


def test_named_models_are_used_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = tmp_path / "my-llm"
    llm.mkdir()
    (llm / "config.json").write_text("{}")
    weights = tmp_path / "yolov8n.pt"
    weights.write_bytes(b"operator's weights")
    diffusion = tmp_path / "my-sd"
    diffusion.mkdir()
    (diffusion / "model_index.json").write_text("{}")
    monkeypatch.setenv("BOIG_DESCRIBER_MODEL_PATH", str(llm))
    monkeypatch.setenv("BOIG_FEATURIZER_DETECTOR_WEIGHTS", str(weights))
    monkeypatch.setenv("BOIG_GENERATOR_MODEL_PATH", str(diffusion))
    monkeypatch.setenv("BOIG_HOME", str(tmp_path / "home"))
    tiny = tmp_path / "home" / "models" / "tiny-sd"  # tests and the evaluation's floor
    assert prepare_all(log=False) == {
        "llm": llm,
        "detector": weights,
        "tiny-diffusion": tiny,
        "diffusion": diffusion,
    }
    assert weights.read_bytes() == b"operator's weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "my-llm", "my-sd", "yolov8n.pt"]
    assert [p.name for p in (tmp_path / "home" / "models").iterdir()] == ["tiny-sd"]


def test_no_detector_backend_needs_no_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = tmp_path / "my-llm"
    llm.mkdir()
    (llm / "config.json").write_text("{}")
    diffusion = tmp_path / "my-sd"
    diffusion.mkdir()
    (diffusion / "model_index.json").write_text("{}")
    monkeypatch.setenv("BOIG_DESCRIBER_MODEL_PATH", str(llm))
    monkeypatch.setenv("BOIG_FEATURIZER_DETECTOR_BACKEND", "none")
    monkeypatch.setenv("BOIG_GENERATOR_MODEL_PATH", str(diffusion))
    monkeypatch.setenv("BOIG_HOME", str(tmp_path / "home"))
    prepared = prepare_all(log=False)
    assert prepared["llm"] == llm and prepared["diffusion"] == diffusion
    assert "detector" not in prepared


@pytest.mark.parametrize("missing", ["llm", "detector", "diffusion"])
def test_missing_named_models_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    llm = tmp_path / "my-llm"
    llm.mkdir()
    if missing != "llm":
        (llm / "config.json").write_text("{}")
    weights = tmp_path / ("absent.pt" if missing == "detector" else "yolov8n.pt")
    if missing != "detector":
        weights.write_bytes(b"weights")
    monkeypatch.setenv("BOIG_DESCRIBER_MODEL_PATH", str(llm))
    monkeypatch.setenv("BOIG_FEATURIZER_DETECTOR_WEIGHTS", str(weights))
    monkeypatch.setenv("BOIG_GENERATOR_MODEL_PATH", str(tmp_path / "no-sd"))
    monkeypatch.setenv("BOIG_HOME", str(tmp_path / "home"))
    expected = {
        "llm": "BOIG_DESCRIBER_MODEL_PATH",
        "detector": "absent.pt",
        "diffusion": "BOIG_GENERATOR_MODEL_PATH",
    }[missing]
    with pytest.raises(ModelMissing, match=expected):
        prepare_all(log=False)


def test_the_world_sd_can_be_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = tmp_path / "my-llm"
    llm.mkdir()
    (llm / "config.json").write_text("{}")
    monkeypatch.setenv("BOIG_DESCRIBER_MODEL_PATH", str(llm))
    monkeypatch.setenv("BOIG_FEATURIZER_DETECTOR_BACKEND", "none")
    monkeypatch.delenv("BOIG_GENERATOR_MODEL_PATH", raising=False)
    monkeypatch.setenv("BOIG_HOME", str(tmp_path / "home"))
    prepared = prepare_all(world_sd=False, log=False)
    assert set(prepared) == {"llm", "tiny-diffusion"}  # nothing trained, nothing missing
    assert not (tmp_path / "home" / "models" / "world-sd").exists()
