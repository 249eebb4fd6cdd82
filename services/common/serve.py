"""Run one service's app under uvicorn: what every ``python -m services.<name>`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI

from services.common.logging import configure_logging
from services.common.settings import ServiceSettings

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def serve(*, service: str, settings: SettingsT, create_app: Callable[[SettingsT], FastAPI]) -> None:
    """One process per service: models load in the app's lifespan, in the process that serves."""
    configure_logging(settings.log_level, service=service, log_format=settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # uvicorn's own lines (startup, errors) go through the handler configure_logging set,
        # in the same format (JSON included), instead of uvicorn's handlers.
        log_config=None,
        # The app logs one line per request with its request id; uvicorn's would duplicate it.
        access_log=False,
        # Named rather than "auto", which falls back to h11 and asyncio without a word when
        # they are missing; both are core dependencies.
        http="httptools",
        loop="uvloop",
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_seconds)),
        timeout_keep_alive=max(5, round(settings.keep_alive_seconds)),
    )
