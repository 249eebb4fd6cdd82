"""Sends again the tasks of jobs the broker may have lost; the job store is the source of truth.

A job's record is committed before its task is sent, so a job can exist without a message:
the gateway died between the two, the broker was down when it tried, or Redis restarted
without persistence and forgot its queues. The sweeper runs in every worker process and, every
few seconds, sends a task for each such job. Duplicates are harmless: the job store's lease
lets exactly one delivery run a job.

A lost Redis is noticed by an epoch key the sweeper keeps there: when it vanishes (or changes),
the broker started empty, and every queued job is sent again at once.

Each pass also exports the queue's length and the age of its oldest job, for the alerts.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any

from celery import Celery

from services.common import metrics
from services.common.jobs import DEFAULT_MAX_ATTEMPTS, JobStore, QueueSummary, utcnow
from services.common.queue import QueueSettings, send_generation_task
from services.generator.retention import JobRetention

logger = logging.getLogger(__name__)

EPOCH_KEY = "boig:queue:epoch"


class BrokerEpoch:
    """Tells whether a Redis broker lost its data since we last looked."""

    def __init__(self, broker_url: str) -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(broker_url, socket_timeout=5)
        self._seen: bytes | None = None

    def lost(self) -> bool:
        """True when the key was missing (a new or emptied Redis) or replaced since last time."""
        created = bool(self._redis.set(EPOCH_KEY, secrets.token_hex(8), nx=True))
        current: bytes | None = self._redis.get(EPOCH_KEY)
        replaced = self._seen is not None and current != self._seen
        self._seen = current
        return created or replaced


class Sweeper:
    """A daemon thread: every ``interval`` seconds, publish what may be missing from the broker."""

    def __init__(
        self,
        app: Celery,
        store: JobStore,
        queue: QueueSettings,
        *,
        interval: float,
        unpublished_grace: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        stale_after: float | None = None,
        retention: JobRetention | None = None,
    ) -> None:
        self._app = app
        self._retention = retention
        self._max_attempts = max_attempts
        self._stale_after = stale_after
        self._store = store
        self._interval = interval
        self._grace = unpublished_grace
        self._epoch = BrokerEpoch(queue.broker_url) if queue.uses_redis else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="boig-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Apart from the sweep, which needs the broker: a broker that is down is when the
            # queue stalls, and the gauges must go on saying so.
            try:
                self.measure_queue()
            except Exception as exc:  # the database is down: the gauges keep their last values
                logger.warning("queue measurement failed: %s: %s", type(exc).__name__, exc)
            try:
                self.sweep()
            except Exception as exc:  # the broker or the database is down: try next time
                logger.warning("sweep failed: %s: %s", type(exc).__name__, exc)
            if self._retention is not None:
                try:
                    self._retention.run_if_due()
                except Exception as exc:  # the database or the disk: try next time
                    logger.warning("retention failed: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self._interval)

    def measure_queue(self) -> QueueSummary:
        """Set boig_generation_queued_jobs and boig_generation_oldest_queued_job_age_seconds."""
        summary = self._store.queue_summary()
        metrics.QUEUED_JOBS.set(summary.queued)
        metrics.OLDEST_QUEUED_JOB_AGE.set(summary.oldest_age_seconds(utcnow()))
        return summary

    def sweep(self) -> list[str]:
        """One pass; returns the ids of the jobs whose task was sent again."""
        lost = self._epoch.lost() if self._epoch is not None else False
        if lost:
            logger.info("the broker started empty (no epoch key): sending every queued job again")
        canceled = self._store.cancel_orphans()
        if canceled:
            logger.info("%d canceled jobs of dead workers marked canceled", canceled)
        # Before sending orphans again: a job that already killed max_attempts workers fails.
        failed = self._store.fail_lost(max_attempts=self._max_attempts)
        if failed:
            logger.warning("%d jobs failed as worker_lost (their workers kept dying)", failed)
        job_ids = self._store.jobs_to_publish(
            unpublished_for=self._grace, all_queued=lost, stale_after=self._stale_after
        )
        for job_id in job_ids:
            send_generation_task(self._app, job_id)
            self._store.mark_published(job_id)
        if job_ids:
            logger.info("sent %d jobs to the broker again", len(job_ids))
        return job_ids
