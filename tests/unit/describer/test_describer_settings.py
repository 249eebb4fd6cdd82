"""Describer settings: defaults, environment names, and refused values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.contracts import KpiLevel
from services.common.settings import default_smollm2_dir
from services.describer.settings import DescriberSettings


def test_defaults_are_deterministic_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOIG_HOME", "/srv/boig")
    settings = DescriberSettings()
    assert settings.port == 8102
    assert settings.backend == "transformers"
    assert settings.temperature == 0.0
    assert settings.model_path == Path("/srv/boig/models/smollm2-135m-instruct")
    assert settings.model_path == default_smollm2_dir()
    assert settings.level_midpoints == {
        KpiLevel.LOW: 0.3,
        KpiLevel.MEDIUM: 0.75,
        KpiLevel.HIGH: 0.95,
    }


def test_environment_uses_the_describer_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOIG_DESCRIBER_PORT", "9000")
    monkeypatch.setenv("BOIG_DESCRIBER_MODEL_PATH", "/models/boigllm")
    monkeypatch.setenv("BOIG_DESCRIBER_LEVEL_MIDPOINTS", '{"low":0.2,"medium":0.7,"high":0.9}')
    monkeypatch.setenv("BOIG_PORT", "1")  # another service's prefix is not ours
    settings = DescriberSettings()
    assert settings.port == 9000
    assert settings.model_path == Path("/models/boigllm")
    assert settings.level_midpoints[KpiLevel.LOW] == 0.2


@pytest.mark.parametrize(
    "midpoints",
    [
        {"low": 0.3, "medium": 0.75},
        {"low": 0.8, "medium": 0.75, "high": 0.95},
        {"low": 0.3, "medium": 0.75, "high": 1.5},
    ],
)
def test_midpoints_must_cover_all_levels_in_order(midpoints: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="level"):
        DescriberSettings(level_midpoints=midpoints)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field, value",
    [
        ("backend", "llama.cpp"),  # no such backend: refused rather than silently ignored
        ("vllm_url", "127.0.0.1:8000"),  # no scheme
        ("vllm_adapters", "both"),
        ("device", "gpu"),
        ("dtype", "float16"),
        ("temperature", -0.1),
        ("batch_limits", {"max_items": 65}),
    ],
)
def test_unsafe_or_unknown_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        DescriberSettings(**{field: value})


def test_every_field_is_documented() -> None:
    assert all(field.description for field in DescriberSettings.model_fields.values())
