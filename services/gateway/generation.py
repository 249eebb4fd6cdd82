"""The gateway's side of generation: create durable jobs, send their tasks, report on them.

A job is committed to the SQL store before its task is sent, so a broker that is down or
slow never loses a job: the worker's sweeper sends what the gateway could not.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from services.common import metrics
from services.common.contracts import (
    MAX_SEED,
    GenerateRequest,
    JobAccepted,
    JobImage,
    JobProgress,
    JobState,
    JobStatus,
)
from services.common.errors import (
    InvalidInput,
    NotFound,
    Overloaded,
    RateLimited,
    validation_message,
)
from services.common.generation import GenerationLimits
from services.common.jobs import Job, JobStore, StoredImage, request_hash
from services.common.queue import PROGRESS_STATE, send_generation_task
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# Sending a task must not hang a request when the broker is away; the sweeper sends it later.
_PUBLISH_RETRY = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def image_url(image_id: str) -> str:
    return f"/v1/images/{image_id}"


def parse_generate_request(body: bytes) -> GenerateRequest:
    try:
        return GenerateRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from exc


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise InvalidInput("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


class Generation:
    """Jobs for one gateway: submit, read, cancel, and serve their images."""

    def __init__(
        self,
        *,
        store: JobStore,
        celery: Celery,
        artifacts: ArtifactStore,
        max_queued_jobs: int,
        retry_after_seconds: float,
        limits: GenerationLimits | None = None,
    ) -> None:
        self.limits = limits or GenerationLimits()
        self.store = store
        self.celery = celery
        self.artifacts = artifacts
        self.max_queued_jobs = max_queued_jobs
        self.retry_after_seconds = retry_after_seconds

    async def submit(
        self, *, owner: str, body: bytes, idempotency_key: str | None
    ) -> tuple[JobAccepted, bool]:
        """Returns the accepted job and whether this call created it (False: a replay)."""
        request = parse_generate_request(body)
        self.limits.check(request)
        key = check_idempotency_key(idempotency_key)
        body_hash = request_hash(body)
        if request.seed is None:
            # Drawn once and stored: a redelivered task must draw the same images.
            request = request.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})
        try:
            job, created = await run_in_threadpool(
                self.store.submit,
                owner=owner,
                request=request,
                body_hash=body_hash,
                idempotency_key=key,
                max_queued=self.max_queued_jobs,
                retry_after_seconds=self.retry_after_seconds,
                max_queued_per_owner=self.limits.max_queued_per_owner,
            )
        except (Overloaded, RateLimited):
            metrics.GENERATION_JOBS.labels("rejected").inc()
            raise
        if created:
            await run_in_threadpool(self._publish, job.id)
        event = "submitted" if created else "replayed"
        metrics.GENERATION_JOBS.labels(event).inc()
        # Under this request's id: the worker's lines for the job carry the job id instead.
        logger.info("job %s %s", job.id, event)
        accepted = JobAccepted(job_id=job.id, status_url=job_url(job.id), state=job.state)
        return accepted, created

    def _publish(self, job_id: str) -> None:
        try:
            send_generation_task(self.celery, job_id, retry=True, retry_policy=_PUBLISH_RETRY)
        except Exception as exc:  # the job is durable; the worker's sweeper sends it later
            logger.warning("job %s saved but not sent to the broker: %s", job_id, exc)
            return
        self.store.mark_published(job_id)

    def broker_state(self) -> str:
        """ "ok" when the broker answers within a second, else the error's class name."""
        try:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=1)
        except Exception as exc:  # reported, never raised: this is a health probe
            return type(exc).__name__
        return "ok"

    async def status(self, job_id: str, *, owner: str) -> JobStatus:
        job = await run_in_threadpool(self.store.get, job_id, owner=owner)
        return await run_in_threadpool(self._status, job)

    async def cancel(self, job_id: str, *, owner: str) -> JobStatus:
        job = await run_in_threadpool(self.store.request_cancel, job_id, owner=owner)
        return await run_in_threadpool(self._status, job)

    async def image(self, image_id: str, *, owner: str) -> bytes:
        stored = await run_in_threadpool(self.store.image, image_id, owner=owner)
        try:
            return await run_in_threadpool(self.artifacts.get, stored.artifact_key)
        except NotFound as exc:
            raise NotFound(f"image {image_id!r} is recorded but its file is missing") from exc

    def _status(self, job: Job) -> JobStatus:
        images = self.store.images(job.id) if job.state is JobState.SUCCEEDED else []
        return JobStatus(
            job_id=job.id,
            state=job.state,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            queue_position=self.store.queue_position(job),
            progress=self._progress(job) if job.state is JobState.RUNNING else None,
            request=job.request,
            outcome=job.outcome,
            images=[_image(image) for image in images],
            error=job.error,
        )

    def _progress(self, job: Job) -> JobProgress | None:
        try:
            result = AsyncResult(job.id, app=self.celery)
            if result.state != PROGRESS_STATE:
                return None
            info: Any = result.info
            return JobProgress.model_validate(info)
        except Exception as exc:  # progress is a nicety; the status must still answer
            logger.warning("progress of job %s unavailable: %s", job.id, exc)
            return None


def _image(image: StoredImage) -> JobImage:
    return JobImage(
        id=image.id,
        url=image_url(image.id),
        rank=image.rank,
        seed=image.seed,
        width=image.width,
        height=image.height,
        reward=image.reward,
        breakdown=image.breakdown,
    )
