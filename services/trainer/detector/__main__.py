"""``python -m services.trainer.detector``: train (or find cached) the shapes detector."""

from services.trainer.detector.prepare import cli

cli()
