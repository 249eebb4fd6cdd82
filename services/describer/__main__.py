"""Run the describer service: ``python -m services.describer`` (settings from BOIG_DESCRIBER_*)."""

from __future__ import annotations

import os

import uvicorn

from services.common.logging import configure_logging
from services.describer.app import create_app
from services.describer.service import SERVICE
from services.describer.settings import DescriberSettings


def main() -> None:
    # Models are only ever read from local folders; make any hub lookup fail fast, not hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = DescriberSettings()
    configure_logging(settings.log_level, service=SERVICE)
    # One process: the model loads in the app's lifespan, in the process that serves.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app logs one line per request, with its request id
    )


if __name__ == "__main__":
    main()
