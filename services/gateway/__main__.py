"""Run the gateway: ``python -m services.gateway`` (settings from BOIG_GATEWAY_* variables)."""

from services.common.serve import serve
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

if __name__ == "__main__":
    serve(service="gateway", settings=GatewaySettings(), create_app=create_app)
