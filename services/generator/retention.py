"""Retention of generation jobs: rows and image files go together, after a configured age.

Rows go first and files after their commit, so an image row never points at a missing file;
a crash in between leaves files nobody refers to, which the next pass does not see (they
cost disk, never correctness). Images are content-addressed, so a file another job still
uses, or stored within the last hour, stays.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.common.jobs import JobStore
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)

RECENT_WRITE_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class RetentionReport:
    jobs: int
    files: int


class JobRetention:
    """Deletes finished jobs older than ``keep_for``, at most once per ``every`` seconds."""

    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        *,
        keep_for: timedelta,
        every: float,
        batch: int = 500,
        max_batches: int = 20,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._keep_for = keep_for
        self._every = every
        self._batch = batch
        self._max_batches = max_batches
        self._next_run = 0.0

    def run_if_due(self) -> RetentionReport | None:
        if time.monotonic() < self._next_run:
            return None
        report = self.run()
        self._next_run = time.monotonic() + self._every
        return report

    def run(self, now: datetime | None = None) -> RetentionReport:
        """Delete every finished job that ended more than ``keep_for`` before ``now``."""
        started = now or datetime.now(UTC)
        cutoff = started - self._keep_for
        # A file stored within the hour may belong to a job whose image row is not committed
        # yet (same bytes, same content address): it stays until a later pass.
        fresh_since = started - RECENT_WRITE_GRACE
        jobs = files = 0
        # At most max_batches per pass: a first pass over a long backlog must not hold up the
        # sweeper's other duties (re-sending lost tasks) for long.
        for _ in range(self._max_batches):
            purged = self._store.purge_finished(finished_before=cutoff, limit=self._batch)
            jobs += len(purged.job_ids)
            for key in purged.artifact_keys:
                files += self._artifacts.delete(key, unless_written_since=fresh_since)
            if len(purged.job_ids) < self._batch:
                break
        if jobs:
            logger.info("retention: deleted %d jobs and %d image files", jobs, files)
        return RetentionReport(jobs=jobs, files=files)
