"""Route wiring with an injected backend: no model load, errors mapped to the one shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from services.describer.app import create_app
from services.describer.settings import DescriberSettings

REQUEST = {"context": {"account": "nike", "text": "New shoes"}, "target": {"level": "low"}}


def make_client(backend: Any) -> TestClient:
    settings = DescriberSettings(model_path=Path("/nonexistent"))
    return TestClient(create_app(settings, backend=backend))


def test_an_injected_backend_serves_without_loading_a_model(fake_backend: Any) -> None:
    with make_client(fake_backend()) as client:
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["model"] == {"name": "fake", "version": "fake-1"}
        response = client.post("/describe", json=REQUEST)
        assert response.status_code == 200
        assert response.json()["verbalization"]["tones"] == ["warm", "bright"]


def test_unusable_model_output_is_a_typed_500(fake_backend: Any) -> None:
    garbage = {key: " ???" for key in ("caption", "colors", "tones", "objects")}
    with make_client(fake_backend(lines=garbage)) as client:
        response = client.post("/describe", json=REQUEST)
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "model_output_error"
        assert error["request_id"] == response.headers["X-Request-ID"]
        assert client.get("/health").status_code == 200


def test_a_crashing_backend_is_a_typed_500_without_internals(fake_backend: Any) -> None:
    backend = fake_backend(fail_with=RuntimeError("secret /opt/weights path exploded"))
    with make_client(backend) as client:
        response = client.post(
            "/likelihood",
            json={"context": REQUEST["context"], "verbalizations": [{"tones": ["warm"]}]},
        )
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "backend_error"
        assert "secret" not in error["message"]
