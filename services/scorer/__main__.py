"""Run the scorer: ``python -m services.scorer`` (settings from BOIG_SCORER_* variables)."""

from __future__ import annotations

import uvicorn

from services.common.logging import configure_logging
from services.scorer.app import create_app
from services.scorer.settings import ScorerSettings


def main() -> None:
    settings = ScorerSettings()
    configure_logging(settings.log_level, service="scorer")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # Our middleware logs one line per request with its id; uvicorn's would duplicate it.
        access_log=False,
    )


if __name__ == "__main__":
    main()
