"""Featurizer settings: environment prefix, defaults under BOIG_HOME, refused values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.featurizer.settings import FeaturizerSettings


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOIG_HOME", str(tmp_path))
    defaults = FeaturizerSettings()
    assert defaults.port == 8101
    assert defaults.detector_weights == tmp_path / "models" / "yolo-shapes" / "best.pt"
    assert defaults.batch_limits.max_items == 32 and defaults.palette_max_colors == 6
    monkeypatch.setenv("BOIG_FEATURIZER_PORT", "9000")
    monkeypatch.setenv("BOIG_FEATURIZER_DETECTOR_WEIGHTS", "/models/yolov8n.pt")
    monkeypatch.setenv("BOIG_FEATURIZER_DETECTOR_BACKEND", "none")
    monkeypatch.setenv("BOIG_IMAGE_MAX_SIDE", "1000")
    configured = FeaturizerSettings()
    assert configured.port == 9000
    assert configured.detector_weights == Path("/models/yolov8n.pt")
    assert configured.detector_backend == "none"
    assert configured.image_limits.max_side == 1000


@pytest.mark.parametrize(
    "field",
    [
        {"detector_backend": "onnx"},
        {"device": "gpu"},
        {"detector_image_size": 100},
        {"detector_confidence": 1.5},
        {"palette_max_colors": 13},
        {"batch_limits": {"max_items": 65}},
        {"detector_max_objects": 51},
        {"detector_cpu_threads": 0},
    ],
)
def test_refuses_bad_values(field: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FeaturizerSettings(**field)  # type: ignore[arg-type]


def test_every_field_is_documented() -> None:
    undocumented = [
        name for name, info in FeaturizerSettings.model_fields.items() if not info.description
    ]
    assert undocumented == []
