"""``serve`` runs uvicorn with a bounded graceful shutdown, in the log format of the settings."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from services.common import serve as serve_module
from services.common.settings import ServiceSettings


def test_uvicorn_gets_a_graceful_shutdown_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(serve_module.uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(serve_module, "configure_logging", lambda *a, **k: None)
    settings = ServiceSettings(shutdown_timeout_seconds=12.4)
    serve_module.serve(service="x", settings=settings, create_app=lambda _: FastAPI())
    assert seen["timeout_graceful_shutdown"] == 12
    # Servers keep idle connections longer than our clients do (no reuse of a closing one).
    from services.common.clients import KEEPALIVE_EXPIRY_SECONDS

    assert seen["timeout_keep_alive"] > KEEPALIVE_EXPIRY_SECONDS


def test_the_service_logs_in_its_format_uvicorn_s_lines_included(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(serve_module.uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(
        serve_module, "configure_logging", lambda *a, **k: seen.update(logging=(a, k))
    )
    settings = ServiceSettings(log_format="json", log_level="WARNING")
    serve_module.serve(service="scorer", settings=settings, create_app=lambda _: FastAPI())
    assert seen["logging"] == (("WARNING",), {"service": "scorer", "log_format": "json"})
    # No logging config of uvicorn's own: its lines reach the root handler, in that format.
    assert seen["log_config"] is None and seen["log_level"] == "warning"
