"""The scorer's HTTP surface: ``POST /score`` over the Scorer, plus the shared plumbing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.common.app import create_service_app
from services.common.clients import DescriberClient, FeaturizerClient, ServiceClient
from services.common.contracts import ScoreRequest, ScoreResponse
from services.common.errors import BoigError
from services.scorer.service import Scorer
from services.scorer.settings import ScorerSettings

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
    owned: list[ServiceClient] = []
    if featurizer is None:
        featurizer = FeaturizerClient(
            settings.featurizer_url, timeout=settings.upstream_timeout_seconds, caller=SERVICE
        )
        owned.append(featurizer)
    if describer is None:
        describer = DescriberClient(
            settings.describer_url, timeout=settings.upstream_timeout_seconds, caller=SERVICE
        )
        owned.append(describer)
    upstreams: dict[str, ServiceClient] = {"featurizer": featurizer, "describer": describer}
    scorer = Scorer(
        featurizer=featurizer,
        describer=describer,
        weights=settings.match_weights(),
        color_scale=settings.color_scale,
        max_creatives=settings.max_creatives_per_request,
    )

    async def readiness() -> dict[str, Any]:
        # Ready only when both upstreams are: a scorer that cannot reach them can score nothing.
        states: dict[str, str] = {}
        for name, client in upstreams.items():
            try:
                states[name] = str((await client.health())["status"])
            except BoigError as exc:
                states[name] = exc.type
        return {"ready": all(state == "ok" for state in states.values()), "upstreams": states}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for client in owned:
                await client.aclose()

    app = create_service_app(
        service=SERVICE,
        version=VERSION,
        max_body_bytes=settings.max_body_bytes,
        health_cache_seconds=settings.health_cache_seconds,
        readiness=readiness,
        lifespan=lifespan,
        description="Ranks candidate creatives by a KPI reward (match, likelihood, contrastive).",
    )
    app.state.settings = settings
    app.state.scorer = scorer

    @app.post(
        "/score",
        response_model=ScoreResponse,
        tags=["scoring"],
        summary="Score and rank a batch of creatives for a context and KPI target",
    )
    async def score(request: ScoreRequest) -> ScoreResponse:
        return await scorer.score(request)

    return app
