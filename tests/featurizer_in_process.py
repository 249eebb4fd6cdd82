"""The real featurizer app in process, reached through the trainer's HTTP featurizer client
over an ASGI transport: palettes and tones, no detector to train."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from services.common.clients import FeaturizerClient
from services.featurizer.app import create_app as create_featurizer
from services.featurizer.settings import FeaturizerSettings
from services.trainer.ingest.featurize import HttpFeaturizer


@asynccontextmanager
async def featurizer_without_detector() -> AsyncIterator[HttpFeaturizer]:
    app = create_featurizer(FeaturizerSettings(detector_backend="none"))
    async with app.router.lifespan_context(app):
        client = FeaturizerClient("http://featurizer", transport=httpx.ASGITransport(app=app))
        try:
            yield await HttpFeaturizer.connect(client)
        finally:
            await client.aclose()
