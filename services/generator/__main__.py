"""Run one generator worker: ``python -m services.generator`` (one process per GPU).

Settings come from BOIG_GENERATOR_* (pipeline, stores, upstreams) and BOIG_QUEUE_* (broker).
Extra arguments go to ``celery worker`` (e.g. ``--hostname gpu1@%h``).
"""

import sys

from services.common.logging import configure_logging
from services.common.queue import GPU_QUEUE
from services.generator import SERVICE
from services.generator.settings import GeneratorSettings
from services.generator.worker import celery_app


def main(argv: list[str]) -> None:
    settings = GeneratorSettings()
    configure_logging(settings.log_level, service=SERVICE, log_format=settings.log_format)
    celery_app.worker_main(
        [
            # JSON logs: every line an object, so no startup banner (printed, not logged).
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            # One task at a time in this process, which owns the GPU and the loaded pipeline.
            "--pool=solo",
            "--concurrency=1",
            f"--queues={GPU_QUEUE}",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            *argv,
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
