"""The gateway's side of KPI feedback: find the creative, keep a copy of its image, record the
observation for the key that sent it, and list a key's records back.

A creative is named by ``image_id`` (an image a job of this key generated) or sent as bytes
with its context. /v1/score records nothing, and a scored creative's id is only the client's
label within one request, so a creative scored before comes back as its bytes: either way its
identity is the SHA-256 of the image file, and the same image reported both ways is one record.
"""

from __future__ import annotations

import io
import logging
from datetime import timedelta

from PIL import Image
from starlette.concurrency import run_in_threadpool

from services.common import metrics
from services.common.contracts import (
    Context,
    FeedbackFilter,
    FeedbackPage,
    FeedbackRecord,
    FeedbackRequest,
)
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.feedback import (
    FEEDBACK_NAMESPACE,
    FeedbackStore,
    NewFeedback,
    RecordOutcome,
)
from services.common.images import check_image
from services.common.jobs import JobStore
from services.common.leases import utcnow
from services.common.settings import ImageLimits
from services.common.storage import ArtifactStore
from services.gateway.cursors import decode_cursor, encode_cursor

logger = logging.getLogger(__name__)

POSTED_AT_SKEW = timedelta(minutes=5)
"""How far in the future a post time may lie (clocks differ); later ones are refused: a KPI
is observed after the post, never before."""
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif"}
CURSOR_PREFIX = "f1:"
"""Cursors of GET /v1/feedback."""


def feedback_url(feedback_id: str) -> str:
    return f"/v1/feedback/{feedback_id}"


class FeedbackIntake:
    """Record, read and list the KPI feedback of the keys that sent it."""

    def __init__(
        self,
        *,
        store: FeedbackStore,
        jobs: JobStore,
        artifacts: ArtifactStore,
        image_limits: ImageLimits,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.artifacts = artifacts
        self.image_limits = image_limits

    async def submit(
        self, *, owner: str, request: FeedbackRequest
    ) -> tuple[FeedbackRecord, RecordOutcome]:
        # Reading images, hashing and the store are blocking: keep them off the event loop.
        try:
            feedback, outcome = await run_in_threadpool(self._submit, owner, request)
        except Conflict:
            metrics.FEEDBACK_RECORDS.labels("conflict").inc()
            raise
        metrics.FEEDBACK_RECORDS.labels(outcome.value).inc()
        logger.info("feedback %s %s (%s)", feedback.id, outcome.value, request.kpi_name)
        return feedback, outcome

    def _submit(self, owner: str, request: FeedbackRequest) -> tuple[FeedbackRecord, RecordOutcome]:
        if request.image_id is not None:
            new = self._generated(owner, request.image_id, request)
        else:
            new = self._uploaded(owner, request)
        feedback, outcome = self.store.record(new, correction=request.correction)
        return feedback.as_record(), outcome

    def _generated(self, owner: str, image_id: str, request: FeedbackRequest) -> NewFeedback:
        """A generated image of this key's: its job's context unless the request brings one."""
        stored = self.jobs.image(image_id, owner=owner)
        context = request.context or self.jobs.get(stored.job_id).request.context
        if context.posted_at is None:
            raise InvalidInput(
                f"context: the job that made image {image_id!r} has no posted_at; send the "
                "context the creative was posted with, posted_at included"
            )
        _check_posted_at(context)
        try:
            data = self.artifacts.get(stored.artifact_key)
        except NotFound as exc:
            raise NotFound(
                f"image {image_id!r} is recorded but its file is gone; send the image itself "
                "(image_base64) with its context"
            ) from exc
        return self._keep(owner, request, data, context, (stored.width, stored.height), ".png")

    def _uploaded(self, owner: str, request: FeedbackRequest) -> NewFeedback:
        assert request.image is not None and request.context is not None  # the contract's rule
        _check_posted_at(request.context)
        # The edge's checks without a pixel decode, as for /v1/score; ingest decodes it fully.
        size = check_image(request.image, limits=self.image_limits, what="image_base64")
        suffix = _SUFFIXES.get(Image.open(io.BytesIO(request.image)).format or "", "")
        return self._keep(owner, request, request.image, request.context, size, suffix)

    def _keep(
        self,
        owner: str,
        request: FeedbackRequest,
        data: bytes,
        context: Context,
        size: tuple[int, int],
        suffix: str,
    ) -> NewFeedback:
        # The record's own copy, written before the row, so a row never names a missing file;
        # content-addressed, so the same image again costs nothing.
        ref = self.artifacts.put(data, namespace=FEEDBACK_NAMESPACE, suffix=suffix)
        return NewFeedback(
            owner=owner,
            context=context,
            kpi_name=request.kpi_name,
            kpi_value=request.kpi_value,
            creative_sha256=ref.sha256,
            artifact_key=ref.key,
            width=size[0],
            height=size[1],
            image_id=request.image_id,
        )

    async def get(self, feedback_id: str, *, owner: str) -> FeedbackRecord:
        feedback = await run_in_threadpool(self.store.get, feedback_id, owner=owner)
        return feedback.as_record()

    async def page(self, *, owner: str, query: FeedbackFilter) -> FeedbackPage:
        before = (
            decode_cursor(query.cursor, prefix=CURSOR_PREFIX) if query.cursor is not None else None
        )
        items, next_before = await run_in_threadpool(
            lambda: self.store.page(
                owner=owner,
                limit=query.limit,
                before=before,
                account=query.account,
                kpi_name=query.kpi_name,
                creative_sha256=query.creative_sha256,
            )
        )
        return FeedbackPage(
            items=[item.as_record() for item in items],
            next_cursor=encode_cursor(next_before, prefix=CURSOR_PREFIX)
            if next_before is not None
            else None,
        )


def _check_posted_at(context: Context) -> None:
    assert context.posted_at is not None
    if context.posted_at > utcnow() + POSTED_AT_SKEW:
        raise InvalidInput(
            f"context.posted_at: {context.posted_at.isoformat()} is in the future; feedback "
            "is what a creative did once it was posted"
        )
