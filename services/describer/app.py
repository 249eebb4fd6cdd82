"""HTTP API of the describer: ``POST /describe`` (content simulation) and ``POST /likelihood``
(behaviour simulation) over the Describer, plus the shared plumbing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from services.common.app import create_service_app
from services.common.contracts import (
    DescribeRequest,
    DescribeResponse,
    LikelihoodRequest,
    LikelihoodResponse,
)
from services.common.errors import ModelUnavailable
from services.describer.backends import LlmBackend, create_backend
from services.describer.service import SERVICE, Describer
from services.describer.settings import DescriberSettings

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def create_app(
    settings: DescriberSettings | None = None, *, backend: LlmBackend | None = None
) -> FastAPI:
    """The describer app. The model loads in the lifespan, in the serving process, unless a
    backend is passed in (tests, embedding). A model that cannot load leaves the service up
    but not ready, answering 503 model_unavailable with what to do about it."""
    settings = settings or DescriberSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if backend is not None:
            app.state.describer = Describer(backend, settings)
        else:
            app.state.describer = await _load(app, settings)
        try:
            yield
        finally:
            app.state.describer = None

    async def readiness() -> dict[str, Any]:
        describer: Describer | None = app.state.describer
        if describer is None:
            return {"ready": False, "model": None, "error": app.state.load_error}
        info = describer.model
        return {"ready": True, "model": {"name": info.name, "version": info.version}}

    app = create_service_app(
        service=SERVICE,
        version=VERSION,
        max_body_bytes=settings.max_body_bytes,
        readiness=readiness,
        lifespan=lifespan,
        description=(
            "BoigLLM: describes how an image should look to reach a KPI level, and predicts "
            "the KPI level of described images."
        ),
    )
    app.state.settings = settings
    app.state.describer = None
    app.state.load_error = "the model is loading"

    @app.post(
        "/describe",
        response_model=DescribeResponse,
        tags=["describer"],
        summary="Describe the image that should reach a KPI level (content simulation)",
    )
    async def describe(body: DescribeRequest, request: Request) -> DescribeResponse:
        describer = _ready_describer(request)
        return await describer.describe(context=body.context, target=body.target)

    @app.post(
        "/likelihood",
        response_model=LikelihoodResponse,
        tags=["describer"],
        summary="Probability of each KPI level for described images (behaviour simulation)",
    )
    async def likelihood(body: LikelihoodRequest, request: Request) -> LikelihoodResponse:
        describer = _ready_describer(request)
        return await describer.likelihood(
            context=body.context, kpi_name=body.kpi_name, verbalizations=body.verbalizations
        )

    return app


async def _load(app: FastAPI, settings: DescriberSettings) -> Describer | None:
    path = settings.model_path
    if not (path / "config.json").is_file():
        app.state.load_error = (
            f"no model at {path}: run `make models` to prepare the default model, "
            "or point BOIG_DESCRIBER_MODEL_PATH at a local model folder"
        )
        logger.error("%s", app.state.load_error)
        return None
    try:
        loaded = await asyncio.to_thread(create_backend, settings)
    except Exception as exc:  # the service stays up and says why it is not ready
        logger.exception("could not load the model from %s", path)
        app.state.load_error = (
            f"the model at {path} failed to load ({type(exc).__name__}); see the describer log, "
            "or run `make models` to prepare it again"
        )
        return None
    app.state.load_error = None
    return Describer(loaded, settings)


def _ready_describer(request: Request) -> Describer:
    # Called in the route, not as a dependency: FastAPI runs dependencies before it validates
    # the body, and a malformed request is the caller's error (422) even while not ready.
    describer: Describer | None = request.app.state.describer
    if describer is None:
        raise ModelUnavailable(request.app.state.load_error or "the model is not loaded")
    return describer
