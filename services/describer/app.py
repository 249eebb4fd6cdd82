"""HTTP API of the describer: ``POST /describe`` (content simulation) and ``POST /likelihood``
(behaviour simulation) over the Describer, plus the shared plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request

from services.common import metrics
from services.common.app import cancel_on_disconnect, create_service_app, error_responses
from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    CheckpointError,
    CheckpointRef,
    CheckpointWatcher,
    load_manifest,
)
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
MODEL_LLM = "llm"
"""The ``model`` label of the describer's language model in the model metrics."""


def create_app(
    settings: DescriberSettings | None = None, *, backend: LlmBackend | None = None
) -> FastAPI:
    """The describer app. The model loads in the lifespan, in the serving process, unless a
    backend is passed in (tests, embedding). A model that cannot load leaves the service up
    but not ready, answering 503 model_unavailable with what to do about it."""
    settings = settings or DescriberSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watch: asyncio.Task[None] | None = None
        if backend is not None:
            app.state.describer = Describer(backend, settings)
        else:
            app.state.describer = await _load(app, settings)
            watcher = app.state.checkpoint_watcher
            if watcher is not None and app.state.describer is not None:
                watch = asyncio.create_task(_watch_checkpoints(app, settings, watcher))
        try:
            yield
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            app.state.describer = None

    async def readiness() -> dict[str, Any]:
        describer: Describer | None = app.state.describer
        if describer is None:
            return {"ready": False, "model": None, "error": app.state.load_error}
        info = describer.model
        return {
            "ready": True,
            "model": {"name": info.name, "version": info.version},
            "checkpoint": app.state.checkpoint,
            "checkpoint_error": app.state.checkpoint_error,
        }

    app = create_service_app(
        service=SERVICE,
        version=VERSION,
        max_body_bytes=settings.max_body_bytes,
        health_cache_seconds=settings.health_cache_seconds,
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
    app.state.checkpoint_watcher = None
    app.state.checkpoint = None  # the version served, None for the base model alone
    app.state.checkpoint_error = None  # why the newest published version was refused

    @app.post(
        "/describe",
        response_model=DescribeResponse,
        tags=["describer"],
        summary="Describe the image that should reach a KPI level (content simulation)",
        responses=error_responses(413, 422, 503),
    )
    async def describe(body: DescribeRequest, request: Request) -> DescribeResponse:
        describer = _ready_describer(request)
        # A caller that gave up (a scorer's timeout) cancels its work, so the model does not
        # spend minutes on answers nobody reads while the queue stays full.
        return await cancel_on_disconnect(
            request, describer.describe(context=body.context, target=body.target)
        )

    @app.post(
        "/likelihood",
        response_model=LikelihoodResponse,
        tags=["describer"],
        summary="Probability of each KPI level for described images (behaviour simulation)",
        responses=error_responses(413, 422, 503),
    )
    async def likelihood(body: LikelihoodRequest, request: Request) -> LikelihoodResponse:
        describer = _ready_describer(request)
        return await cancel_on_disconnect(
            request,
            describer.likelihood(
                context=body.context, kpi_name=body.kpi_name, verbalizations=body.verbalizations
            ),
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
    if settings.checkpoint_registry is not None:
        watcher = CheckpointWatcher(settings.checkpoint_registry, settings.checkpoint_name)
        app.state.checkpoint_watcher = watcher
        checkpoint = _poll(app, watcher)
        if checkpoint is not None:
            started = time.perf_counter()
            try:
                loaded, published = await asyncio.to_thread(_load_checkpoint, settings, checkpoint)
            except Exception as exc:  # serve the base model rather than nothing
                _refused(app, checkpoint, exc)
            else:
                app.state.load_error = None
                app.state.checkpoint = checkpoint.version
                _export_checkpoint(published)
                _export_model(loaded, time.perf_counter() - started)
                return Describer(loaded, settings)
    started = time.perf_counter()
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
    _export_model(loaded, time.perf_counter() - started)
    if settings.checkpoint_registry is not None:
        _export_checkpoint(None)  # a registry, yet the base model alone: alerts.yml warns
    return Describer(loaded, settings)


def _load_checkpoint(
    settings: DescriberSettings, checkpoint: CheckpointRef
) -> tuple[LlmBackend, datetime]:
    """Blocking: verify every file of ``checkpoint`` against its manifest, then load it;
    returned with its publish time."""
    manifest = load_manifest(checkpoint, verify=True, kind=KIND_BOIGLLM_LORA)
    return create_backend(settings, checkpoint), manifest.created_at


def _export_checkpoint(published: datetime | None) -> None:
    """The served checkpoint's publish time for the staleness alerts; 0 for the base model."""
    value = 0.0 if published is None else published.timestamp()
    metrics.CHECKPOINT_PUBLISHED.labels(SERVICE).set(value)


def _export_model(backend: LlmBackend, seconds: float) -> None:
    """The model now served (base model, or base model and checkpoint) and its load time,
    verification of a checkpoint's files included."""
    info = backend.info
    metrics.record_model_load(
        SERVICE, MODEL_LLM, name=info.name, version=info.version, seconds=seconds
    )


def _poll(app: FastAPI, watcher: CheckpointWatcher) -> CheckpointRef | None:
    try:
        return watcher.poll()
    except CheckpointError as exc:  # a broken pointer: keep serving, say why
        logger.error("checkpoint registry unreadable: %s", exc)
        app.state.checkpoint_error = str(exc)
        return None


def _refused(app: FastAPI, checkpoint: CheckpointRef, exc: Exception) -> None:
    logger.error(
        "checkpoint %s/%s refused, keeping the current model: %s",
        checkpoint.name,
        checkpoint.version,
        exc,
        exc_info=not isinstance(exc, CheckpointError),
    )
    app.state.checkpoint_error = (
        f"checkpoint {checkpoint.version} refused ({type(exc).__name__}); see the describer log"
    )


async def _watch_checkpoints(
    app: FastAPI, settings: DescriberSettings, watcher: CheckpointWatcher
) -> None:
    """Hot reload: when the registry pointer moves, verify and load the new version off the
    event loop while the current model keeps serving, then swap it in."""
    while True:
        await asyncio.sleep(settings.checkpoint_poll_seconds)
        describer: Describer | None = app.state.describer
        checkpoint = _poll(app, watcher)
        if describer is None or checkpoint is None:
            continue
        logger.info("checkpoint pointer moved to %s; loading it", checkpoint.version)
        started = time.perf_counter()
        try:
            loaded, published = await asyncio.to_thread(_load_checkpoint, settings, checkpoint)
        except Exception as exc:  # a bad checkpoint never takes the service down
            _refused(app, checkpoint, exc)
            continue
        seconds = time.perf_counter() - started
        await describer.swap_backend(loaded)
        app.state.checkpoint = checkpoint.version
        app.state.checkpoint_error = None
        _export_checkpoint(published)
        _export_model(loaded, seconds)
        logger.info("now serving %s (%s)", loaded.info.name, loaded.info.version)


def _ready_describer(request: Request) -> Describer:
    # Called in the route, not as a dependency: FastAPI runs dependencies before it validates
    # the body, and a malformed request is the caller's error (422) even while not ready.
    describer: Describer | None = request.app.state.describer
    if describer is None:
        raise ModelUnavailable(request.app.state.load_error or "the model is not loaded")
    return describer
