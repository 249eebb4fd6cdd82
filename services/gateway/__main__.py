"""Run the gateway: ``python -m services.gateway`` (settings from BOIG_GATEWAY_* variables)."""

from __future__ import annotations

import uvicorn

from services.common.logging import configure_logging
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, service="gateway")
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
