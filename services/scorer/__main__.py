"""Run the scorer: ``python -m services.scorer`` (settings from BOIG_SCORER_* variables)."""

from services.common.serve import serve
from services.scorer.app import create_app
from services.scorer.settings import ScorerSettings

if __name__ == "__main__":
    serve(service="scorer", settings=ScorerSettings(), create_app=create_app)
