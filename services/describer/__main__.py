"""Run the describer: ``python -m services.describer`` (settings from BOIG_DESCRIBER_*)."""

import os

from services.common.serve import serve
from services.describer.app import create_app
from services.describer.service import SERVICE
from services.describer.settings import DescriberSettings

if __name__ == "__main__":
    # Models are only ever read from local folders; make any hub lookup fail fast, not hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    serve(service=SERVICE, settings=DescriberSettings(), create_app=create_app)
