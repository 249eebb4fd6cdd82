"""Run one training worker: ``python -m services.trainer`` (one process; one run at a time).

Settings come from BOIG_TRAINER_* (services, registry, runs) and BOIG_QUEUE_* (broker).
Extra arguments go to ``celery worker``.
"""

import sys

from services.common.logging import configure_logging
from services.common.queue import TRAIN_QUEUE


def main(argv: list[str]) -> None:
    from services.trainer.worker import celery_app, settings

    configure_logging(settings.log_level, service="trainer", log_format=settings.log_format)
    celery_app.worker_main(
        [
            # JSON logs: every line an object, so no startup banner (printed, not logged).
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={TRAIN_QUEUE}",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            *argv,
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
