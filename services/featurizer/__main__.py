"""Run the featurizer: ``python -m services.featurizer`` (settings from BOIG_FEATURIZER_*)."""

from services.common.serve import serve
from services.featurizer.app import create_app
from services.featurizer.service import SERVICE
from services.featurizer.settings import FeaturizerSettings

if __name__ == "__main__":
    serve(service=SERVICE, settings=FeaturizerSettings(), create_app=create_app)
