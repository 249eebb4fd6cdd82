"""Run the featurizer service: ``python -m services.featurizer`` (settings: BOIG_FEATURIZER_*)."""

from __future__ import annotations

import uvicorn

from services.common.logging import configure_logging
from services.featurizer.app import create_app
from services.featurizer.service import SERVICE
from services.featurizer.settings import FeaturizerSettings


def main() -> None:
    settings = FeaturizerSettings()
    configure_logging(settings.log_level, service=SERVICE)
    # One process: the detector is loaded in the app's lifespan, in the process that serves.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app logs one line per request, with its request id
    )


if __name__ == "__main__":
    main()
