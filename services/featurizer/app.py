"""HTTP API of the featurizer: ``POST /featurize`` turns a batch of images into verbalizations."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from services.common import metrics, wire
from services.common.app import create_service_app, error_responses
from services.common.contracts import (
    FeaturizeRequest,
    FeaturizeResponse,
    FeaturizeResult,
    ImageInput,
)
from services.common.errors import Overloaded
from services.common.images import (
    DecodedImage,
    check_pixel_budget,
    decode_for_analysis,
    image_size,
)
from services.common.settings import ImageLimits
from services.featurizer.backends import load_detector
from services.featurizer.service import FEATURIZER_VERSION, SERVICE, Featurizer
from services.featurizer.settings import FeaturizerSettings

logger = logging.getLogger(__name__)

MODEL_DETECTOR = "detector"
"""The ``model`` label of the object detector in the model metrics (none with backend 'none')."""


def create_app(settings: FeaturizerSettings | None = None) -> FastAPI:
    """The featurizer app; the detector loads once, at startup, in the serving process."""
    settings = settings or FeaturizerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        detector = await asyncio.to_thread(load_detector, settings)
        if detector is not None:
            metrics.record_model_load(
                SERVICE,
                MODEL_DETECTOR,
                name=detector.info.name,
                version=detector.info.version,
                seconds=time.perf_counter() - started,
            )
        featurizer = Featurizer.from_settings(settings, detector)
        app.state.featurizer = featurizer
        try:
            yield
        finally:
            app.state.featurizer = None
            await asyncio.to_thread(featurizer.close)

    async def readiness() -> dict[str, Any]:
        featurizer: Featurizer | None = getattr(app.state, "featurizer", None)
        detector: dict[str, Any] = {"backend": settings.detector_backend, "loaded": False}
        if featurizer is not None and featurizer.detector_info is not None:
            info = featurizer.detector_info
            detector.update(loaded=True, model=info.name, version=info.version)
        ready = featurizer is not None and (
            detector["loaded"] or settings.detector_backend == "none"
        )
        return {"ready": ready, "detector": detector}

    app = create_service_app(
        service=SERVICE,
        version=FEATURIZER_VERSION,
        max_body_bytes=settings.max_body_bytes,
        health_cache_seconds=settings.health_cache_seconds,
        readiness=readiness,
        lifespan=lifespan,
        description="Image -> verbalization: colour palette, tone words, detected objects.",
        request_models=(FeaturizeRequest,),
    )
    app.state.settings = settings
    app.state.featurizer = None
    in_flight = 0  # touched only on the event loop thread, so no lock

    @app.post(
        "/featurize",
        response_model=FeaturizeResponse,
        tags=["featurizer"],
        summary="Verbalize a batch of images",
        responses=error_responses(413, 415, 422, 503),
        openapi_extra=wire.request_body(FeaturizeRequest, images=True),
    )
    async def featurize(body: FeaturizeBody, featurizer: FeaturizerDep) -> FeaturizeResponse:
        nonlocal in_flight
        settings.batch_limits.check(len(body.images), "images")
        if in_flight >= settings.max_pending_requests:
            raise Overloaded("the featurizer is busy; retry shortly", retry_after=1.0)
        in_flight += 1
        try:
            started = time.perf_counter()
            decoded_images = await asyncio.to_thread(
                decode_images, body.images, settings.image_limits, settings.decode_max_side
            )
            decoded = time.perf_counter()
            verbalizations = await asyncio.to_thread(
                featurizer.featurize,
                [item.image for item in decoded_images],
                detect_objects=body.detect_objects,
            )
            logger.debug(
                "featurized %d images: decode %.1f ms, analysis %.1f ms",
                len(decoded_images),
                (decoded - started) * 1000,
                (time.perf_counter() - decoded) * 1000,
            )
        finally:
            in_flight -= 1
        return FeaturizeResponse(
            results=[
                FeaturizeResult(
                    id=item.id,
                    width=image.width,
                    height=image.height,
                    animated=image.animated,
                    verbalization=verbalization,
                )
                for item, image, verbalization in zip(
                    body.images, decoded_images, verbalizations, strict=True
                )
            ],
            featurizer_version=featurizer.version,
            detector=featurizer.detector_info if body.detect_objects else None,
        )

    return app


def decode_images(
    inputs: list[ImageInput], limits: ImageLimits, max_side: int | None = None
) -> list[DecodedImage]:
    """Decode every image or raise the first failure, naming it by its id, else ``images[i]``.

    Every header is read and the request's pixel budget checked before any pixel is decoded.
    The id matters: callers such as the scorer pass the user's creative ids, and only a
    full decode here finds some damage (a truncated JPEG) that their cheaper checks pass.
    """
    named = []
    for index, item in enumerate(inputs):
        what = f"images[{index}] ({item.id!r})" if item.id else f"images[{index}]"
        named.append((what, item.data))
    check_pixel_budget(
        (image_size(data, limits=limits, what=what) for what, data in named), limits=limits
    )
    return [
        decode_for_analysis(data, limits=limits, what=what, max_side=max_side)
        for what, data in named
    ]


def _featurizer(request: Request) -> Featurizer:
    featurizer: Featurizer | None = request.app.state.featurizer
    if featurizer is None:  # only between startup and shutdown, or with the lifespan not run
        raise Overloaded("the featurizer is not ready", retry_after=1.0)
    return featurizer


FeaturizerDep = Annotated[Featurizer, Depends(_featurizer)]
FeaturizeBody = Annotated[FeaturizeRequest, Depends(wire.body_reader(FeaturizeRequest))]
