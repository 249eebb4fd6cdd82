"""The scorer's HTTP surface: ``POST /score`` over the Scorer, plus the shared plumbing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from services.common import wire
from services.common.app import create_service_app, error_responses
from services.common.clients import DescriberClient, FeaturizerClient, Upstreams
from services.common.contracts import ScoreRequest, ScoreResponse
from services.scorer.service import Scorer
from services.scorer.settings import ScorerSettings

ScoreBody = Annotated[ScoreRequest, Depends(wire.body_reader(ScoreRequest))]
VERSION = "0.1.0"
SERVICE = "scorer"


def create_app(
    settings: ScorerSettings | None = None,
    *,
    featurizer: FeaturizerClient | None = None,
    describer: DescriberClient | None = None,
) -> FastAPI:
    """Build the scorer app; clients passed in (tests, embedding) are the caller's to close."""
    settings = settings or ScorerSettings()
    upstreams = Upstreams(caller=SERVICE, timeout=settings.upstream_timeout_seconds)
    featurizer = upstreams.add(FeaturizerClient, settings.featurizer_url, featurizer)
    describer = upstreams.add(DescriberClient, settings.describer_url, describer)
    scorer = Scorer(
        featurizer=featurizer,
        describer=describer,
        weights=settings.match_weights(),
        color_scale=settings.color_scale,
        batch_limits=settings.batch_limits,
    )

    async def readiness() -> dict[str, Any]:
        # Ready only when both upstreams are: a scorer that cannot reach them can score nothing.
        states = await upstreams.states()
        return {"ready": all(state == "ok" for state in states.values()), "upstreams": states}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await upstreams.aclose()

    app = create_service_app(
        service=SERVICE,
        version=VERSION,
        max_body_bytes=settings.max_body_bytes,
        health_cache_seconds=settings.health_cache_seconds,
        readiness=readiness,
        lifespan=lifespan,
        description="Ranks candidate creatives by a KPI reward (match, likelihood, contrastive).",
        request_models=(ScoreRequest,),
    )
    app.state.settings = settings
    app.state.scorer = scorer

    @app.post(
        "/score",
        response_model=ScoreResponse,
        tags=["scoring"],
        summary="Score and rank a batch of creatives for a context and KPI target",
        # 502 and 503 come from the featurizer and describer: unreachable, busy or loading.
        responses=error_responses(413, 415, 422, 502, 503),
        openapi_extra=wire.request_body(ScoreRequest, images=True),
    )
    async def score(request: ScoreBody) -> ScoreResponse:
        return await scorer.score(request)

    return app
