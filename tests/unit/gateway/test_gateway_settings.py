"""Gateway settings: documented defaults, environment overrides, unsafe values refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.settings import ImageLimits
from services.gateway.settings import GatewaySettings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("BOIG_HOME", str(tmp_path))
    settings = GatewaySettings()
    assert settings.port == 8100
    assert settings.batch_limits.max_items == 32
    assert settings.rate_limit == "60/minute"
    assert settings.rate_limit_storage_url == "memory://"
    assert settings.scorer_url == "http://127.0.0.1:8103"
    assert settings.database_url == f"sqlite:///{tmp_path}/boig.db"


def test_every_field_is_documented() -> None:
    assert all(field.description for field in GatewaySettings.model_fields.values())


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOIG_BATCH_MAX_ITEMS", "8")
    monkeypatch.setenv("BOIG_GATEWAY_RATE_LIMIT", "10/second;100/hour")
    monkeypatch.setenv("BOIG_GATEWAY_RATE_LIMIT_STORAGE_URL", "redis://127.0.0.1:6379")
    settings = GatewaySettings()
    assert settings.batch_limits.max_items == 8
    assert settings.rate_limit == "10/second;100/hour"
    assert settings.rate_limit_storage_url.startswith("redis://")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_limits", {"max_items": 65}, "less than or equal to 64"),
        ("batch_limits", {"max_items": 0}, "greater than or equal to 1"),
        ("rate_limit", "lots", "limits notation"),
        ("rate_limit", "0/minute", "at least one request"),
        ("rate_limit_storage_url", "memcached://127.0.0.1:11211", "scheme"),
        ("rate_limit_strategy", "sliding", "moving-window"),
    ],
)
def test_unsafe_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings.model_validate({field: value})


def test_an_image_limit_that_cannot_fit_in_a_body_is_refused() -> None:
    with pytest.raises(ValidationError, match="cannot fit"):
        GatewaySettings(max_body_bytes=1 << 20, image_limits=ImageLimits(max_bytes=1 << 20))
