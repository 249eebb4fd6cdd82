"""The gateway's HTTP surface: authenticated, rate-limited /v1 routes over the Gateway logic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from celery import Celery
from fastapi import FastAPI, Header, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common import wire
from services.common.app import create_service_app, error_responses, read_limited
from services.common.checkpoints import BOIGLLM_CHECKPOINT, NAME_PATTERN
from services.common.clients import DescriberClient, ScorerClient, Upstreams
from services.common.contracts import (
    MAX_BATCH_IMAGES,
    CheckpointList,
    DescribeRequest,
    DescribeResponse,
    FeedbackFilter,
    FeedbackPage,
    FeedbackRecord,
    FeedbackRequest,
    GenerateRequest,
    JobAccepted,
    JobStatus,
    RetrainDecision,
    RetrainDecisionFilter,
    RetrainDecisionPage,
    ScoreRequest,
    ScoreResponse,
)
from services.common.db import Database
from services.common.errors import (
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    validation_message,
)
from services.common.feedback import FeedbackStore, RecordOutcome
from services.common.jobs import JobStore
from services.common.queue import QueueSettings, create_celery_app
from services.common.retraining import RetrainLedger
from services.common.storage import open_artifact_store
from services.gateway.auth import KeyStore
from services.gateway.feedback import FeedbackIntake, feedback_url
from services.gateway.generation import Generation
from services.gateway.playground import add_playground
from services.gateway.rate_limit import (
    KeyRateLimiter,
    PollLimitedKey,
    RateLimitedKey,
    rate_limit_storage,
)
from services.gateway.retraining import RetrainRecords
from services.gateway.service import Gateway, UploadedCreative, build_score_request
from services.gateway.settings import GatewaySettings

VERSION = "0.1.0"
SERVICE = "gateway"

_MULTIPART_FIELDS = {"request", "creatives"}

# Every /v1 route: a missing or wrong key, a rate limit, and 503 when the rate-limit storage
# is down; routes with a body add what reading it can refuse.
_KEYED = (401, 429, 503)
_BODY = (413, 415, 422)

_SCORE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}},
            # Raw image bytes instead of base64; what the internal hops use (common.wire).
            "application/msgpack": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request", "creatives"],
                    "properties": {
                        "request": {
                            "type": "string",
                            "description": (
                                'JSON of {"context", "target", "reward"}, as in ScoreRequest '
                                "without creatives."
                            ),
                        },
                        "creatives": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": (
                                "Image files (PNG, JPEG, WebP, GIF: an animated one is scored "
                                "by its first frame); each id is the file name's stem, "
                                "sanitized and made unique."
                            ),
                        },
                    },
                }
            },
        },
    }
}


def create_app(
    settings: GatewaySettings | None = None,
    *,
    scorer: ScorerClient | None = None,
    describer: DescriberClient | None = None,
    database: Database | None = None,
    celery: Celery | None = None,
) -> FastAPI:
    """Build the gateway app; clients and a database passed in are the caller's to close."""
    settings = settings or GatewaySettings()
    upstreams = Upstreams(caller=SERVICE, timeout=settings.upstream_timeout_seconds)
    scorer = upstreams.add(ScorerClient, settings.scorer_url, scorer)
    describer = upstreams.add(DescriberClient, settings.describer_url, describer)
    owns_database = database is None
    db = database if database is not None else Database(settings.database_url)
    generation = Generation(
        store=JobStore(db),
        celery=celery or create_celery_app(QueueSettings(), name="boig-gateway"),
        artifacts=open_artifact_store(settings),
        max_queued_jobs=settings.max_queued_jobs,
        retry_after_seconds=settings.queue_retry_after_seconds,
    )
    gateway = Gateway(
        scorer=scorer,
        describer=describer,
        image_limits=settings.image_limits,
        batch_limits=settings.batch_limits,
    )
    feedback = FeedbackIntake(
        store=FeedbackStore(db),
        jobs=generation.store,
        artifacts=generation.artifacts,
        image_limits=settings.image_limits,
    )
    retraining = RetrainRecords(RetrainLedger(db))

    async def readiness() -> dict[str, Any]:
        # Only the database decides readiness: with the scorer down, /v1/describe still works,
        # so taking the whole gateway out of rotation would do more harm than a 502 on /v1/score.
        await run_in_threadpool(_ping, db)
        states = await upstreams.states()
        # The broker does not decide readiness either: jobs are saved first and the worker's
        # sweeper sends what could not be sent, so a broker outage delays jobs, loses none.
        states["queue"] = await run_in_threadpool(generation.broker_state)
        return {"ready": True, "database": "ok", "upstreams": states}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(db.create_schema)
        try:
            yield
        finally:
            await upstreams.aclose()
            if owns_database:
                db.dispose()

    app = create_service_app(
        service=SERVICE,
        version=VERSION,
        max_body_bytes=settings.max_body_bytes,
        health_cache_seconds=settings.health_cache_seconds,
        readiness=readiness,
        lifespan=lifespan,
        description=(
            "BOIG public API: score candidate creatives for a KPI target, get creative briefs, "
            "generate images, report the KPIs creatives observed once posted, and see which "
            "checkpoints retraining promoted or rejected and why. "
            "Every /v1 route needs an API key (Authorization: Bearer or X-API-Key)."
        ),
        # Read by the routes themselves, after authentication: their requestBody refers to these.
        request_models=(ScoreRequest, GenerateRequest, DescribeRequest, FeedbackRequest),
    )
    app.state.settings = settings
    app.state.gateway = gateway
    app.state.key_store = KeyStore(db)
    counters = rate_limit_storage(settings.rate_limit_storage_url, settings.rate_limit_key_prefix)
    limiter_options: dict[str, Any] = {
        "strategy": settings.rate_limit_strategy,
        "fail_open": settings.rate_limit_fail_open,
    }
    app.state.rate_limiter = KeyRateLimiter(settings.rate_limit, counters, **limiter_options)
    app.state.poll_rate_limiter = KeyRateLimiter(
        settings.poll_rate_limit,
        counters,
        kind="polls",
        subject="job and image reads with this API key",
        **limiter_options,
    )
    app.state.auth_failure_limiter = KeyRateLimiter(
        settings.auth_failure_limit,
        counters,
        kind="auth_failures",
        subject="failed authentications from this address with this key",
        **limiter_options,
    )
    app.state.auth_failure_address_limiter = KeyRateLimiter(
        settings.auth_failure_address_limit,
        counters,
        kind="auth_failures_per_address",
        subject="failed authentications from this address",
        **limiter_options,
    )

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        tags=["scoring"],
        summary="Score and rank candidate creatives for a context and KPI target",
        description=(
            "Send either a JSON ScoreRequest (creatives base64-encoded) or multipart/form-data "
            "with a `request` field (JSON of context, target, reward) and `creatives` files. "
            f"At most {settings.batch_limits.max_items} creatives; each must be a decodable image."
        ),
        openapi_extra=_SCORE_BODY,
        responses=error_responses(*_KEYED, *_BODY, 502),
    )
    async def score(request: Request, _key: RateLimitedKey) -> ScoreResponse:
        media_type = wire.media_type(request.headers.get("content-type"))
        if media_type == "multipart/form-data":
            score_request = await _read_multipart(request, gateway)
        elif media_type in (wire.JSON, wire.MSGPACK):
            score_request = wire.parse_body(ScoreRequest, await request.body(), media_type)
        else:
            raise UnsupportedMediaType(
                f"unsupported content type {media_type!r}: send {wire.JSON}, "
                f"multipart/form-data or {wire.MSGPACK}"
            )
        return await gateway.score(score_request)

    @app.post(
        "/v1/describe",
        response_model=DescribeResponse,
        tags=["describing"],
        summary="Describe how an image for this context should look to reach the KPI target",
        openapi_extra=wire.request_body(DescribeRequest, images=False),
        responses=error_responses(*_KEYED, *_BODY, 502),
    )
    async def describe(request: Request, _key: RateLimitedKey) -> DescribeResponse:
        # The body is read here, after the key was checked: a declared body parameter would
        # be parsed before any dependency ran, for anonymous clients too.
        body = await _read_json_body(request, settings.max_json_body_bytes)
        try:
            describe_request = DescribeRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidInput(validation_message(exc)) from exc
        return await gateway.describe(describe_request)

    @app.post(
        "/v1/generate",
        status_code=202,
        response_model=JobAccepted,
        tags=["generation"],
        summary="Start a generation job for a context and KPI target",
        description=(
            "Answers 202 with the job id at once; poll `status_url`. With an `Idempotency-Key` "
            "header the same key and body return the same job, and the same key with another "
            "body is a 409. While the queue is full: 503 with Retry-After."
        ),
        openapi_extra=wire.request_body(GenerateRequest, images=False),
        responses=error_responses(*_KEYED, *_BODY, 409),
    )
    async def generate(
        request: Request,
        response: Response,
        key: RateLimitedKey,
        idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
    ) -> JobAccepted:
        body = await _read_json_body(request, settings.max_json_body_bytes)
        accepted, created = await generation.submit(
            owner=key.prefix, body=body, idempotency_key=idempotency_key
        )
        response.headers["Location"] = accepted.status_url
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return accepted

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobStatus,
        tags=["generation"],
        summary="A job's state, queue position, progress and, once done, its images",
        responses=error_responses(*_KEYED, 404),
    )
    async def get_job(job_id: str, key: PollLimitedKey) -> JobStatus:
        return await generation.status(job_id, owner=key.prefix)

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobStatus,
        tags=["generation"],
        summary="Cancel a job: a queued one at once, a running one at its next denoising step",
        responses=error_responses(*_KEYED, 404, 409),
    )
    async def cancel_job(job_id: str, key: RateLimitedKey) -> JobStatus:
        return await generation.cancel(job_id, owner=key.prefix)

    @app.get(
        "/v1/images/{image_id}",
        tags=["generation"],
        summary="A generated image (PNG)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **error_responses(*_KEYED, 404)},
    )
    async def get_image(image_id: str, key: PollLimitedKey) -> Response:
        data = await generation.image(image_id, owner=key.prefix)
        # An image id names fixed bytes: caches may keep it, but only for this key's owner.
        return Response(
            data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
        )

    @app.post(
        "/v1/feedback",
        status_code=201,
        response_model=FeedbackRecord,
        tags=["feedback"],
        summary="Record the KPI a creative observed once posted",
        description=(
            "Name the creative by `image_id` (an image a job of this key generated) or send "
            "its image (`image_base64`) with its context; `context.posted_at` is required. "
            "One record per key, account, creative (its image's SHA-256) and KPI name: the "
            "same observation again answers 200 with the record (Idempotent-Replayed), "
            "another value or context is a 409 unless `correction` is true, which replaces "
            "it (200, revision + 1). JSON or MessagePack (the image as raw bytes)."
        ),
        openapi_extra=wire.request_body(FeedbackRequest, images=True),
        responses={
            201: {"description": "Recorded; Location names the new record."},
            200: {
                "model": FeedbackRecord,
                "description": "Recorded before (a replay), or a correction applied.",
            },
            **error_responses(*_KEYED, *_BODY, 404, 409),
        },
    )
    async def submit_feedback(
        request: Request, response: Response, key: RateLimitedKey
    ) -> FeedbackRecord:
        body = await request.body()
        feedback_request = wire.parse_body(
            FeedbackRequest, body, request.headers.get("content-type")
        )
        record, outcome = await feedback.submit(owner=key.prefix, request=feedback_request)
        response.headers["Location"] = feedback_url(record.id)
        if outcome is not RecordOutcome.CREATED:
            response.status_code = 200
        if outcome is RecordOutcome.REPLAYED:
            response.headers["Idempotent-Replayed"] = "true"
        return record

    @app.get(
        "/v1/feedback",
        response_model=FeedbackPage,
        tags=["feedback"],
        summary="This key's KPI feedback, newest first, by account, KPI or creative",
        responses=error_responses(*_KEYED, 422),
    )
    async def list_feedback(
        key: RateLimitedKey, query: Annotated[FeedbackFilter, Query()]
    ) -> FeedbackPage:
        return await feedback.page(owner=key.prefix, query=query)

    @app.get(
        "/v1/feedback/{feedback_id}",
        response_model=FeedbackRecord,
        tags=["feedback"],
        summary="One feedback record of this key",
        responses=error_responses(*_KEYED, 404),
    )
    async def get_feedback(feedback_id: str, key: RateLimitedKey) -> FeedbackRecord:
        return await feedback.get(feedback_id, owner=key.prefix)

    @app.get(
        "/v1/checkpoints",
        response_model=CheckpointList,
        tags=["retraining"],
        summary="A model's published checkpoints, newest first, and which one is served",
        description=(
            "As the training worker last recorded the registry (after each publish, "
            "promotion, rejection or rollback it makes): `recorded_at` says when."
        ),
        responses=error_responses(*_KEYED, 422),
    )
    async def list_checkpoints(
        _key: RateLimitedKey,
        name: Annotated[
            str, Query(pattern=NAME_PATTERN, description="Registry entry: boigllm or boigsd.")
        ] = BOIGLLM_CHECKPOINT,
    ) -> CheckpointList:
        return await retraining.checkpoints(name)

    @app.get(
        "/v1/retrain/decisions",
        response_model=RetrainDecisionPage,
        tags=["retraining"],
        summary="Why each checkpoint was promoted, rejected or rolled back, newest first",
        description=(
            "Each retrain records both checkpoints' metrics on the most recent held-out "
            "posts, the confidence interval of the candidate's improvement, the data hash "
            "and what feedback it folded in; operators' promotions and rollbacks are "
            "recorded too."
        ),
        responses=error_responses(*_KEYED, 422),
    )
    async def list_retrain_decisions(
        _key: RateLimitedKey, query: Annotated[RetrainDecisionFilter, Query()]
    ) -> RetrainDecisionPage:
        return await retraining.page(query)

    @app.get(
        "/v1/retrain/decisions/{decision_id}",
        response_model=RetrainDecision,
        tags=["retraining"],
        summary="One retrain decision",
        responses=error_responses(*_KEYED, 404),
    )
    async def get_retrain_decision(decision_id: str, _key: RateLimitedKey) -> RetrainDecision:
        return await retraining.decision(decision_id)

    if settings.playground:
        add_playground(app)

    return app


async def _read_multipart(request: Request, gateway: Gateway) -> ScoreRequest:
    try:
        # max_files stops a flood of parts early; the configured count is checked below, with
        # our own message. Non-file fields (the request JSON) keep Starlette's 1 MiB cap.
        form = await request.form(max_files=MAX_BATCH_IMAGES, max_fields=len(_MULTIPART_FIELDS))
    except StarletteHTTPException as exc:
        raise InvalidInput(f"malformed multipart body: {exc.detail}") from exc
    try:
        unknown = set(form.keys()) - _MULTIPART_FIELDS
        if unknown:
            raise InvalidInput(
                f"unknown multipart fields {sorted(unknown)}; expected 'request' and 'creatives'"
            )
        spec = form.get("request")
        if not isinstance(spec, str):
            raise InvalidInput(
                "multipart body needs a 'request' text field: JSON of context, target and reward"
            )
        files = form.getlist("creatives")
        if not all(isinstance(part, UploadFile) for part in files):
            raise InvalidInput("'creatives' parts must be files")
        gateway.check_creative_count(len(files))
        # Read one byte past the limit: enough to know a file is too big without holding it all.
        limit = gateway.image_limits.max_bytes + 1
        uploads = [
            UploadedCreative(filename=part.filename, data=await part.read(limit))
            for part in files
            if isinstance(part, UploadFile)
        ]
    finally:
        await form.close()
    return build_score_request(spec, uploads, limits=gateway.image_limits)


async def _read_json_body(request: Request, limit: int) -> bytes:
    """The body of a route that carries no images: JSON, at most ``limit`` bytes, refused by
    its declared length before it is read and by the bytes read when it declares none."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("application/json", ""):
        raise UnsupportedMediaType(f"unsupported content type {media_type!r}: send JSON")
    too_large = PayloadTooLarge(f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = await read_limited(request.receive, limit)
    if body is None:
        raise too_large
    return body


def _ping(db: Database) -> None:
    with db.session() as session:
        session.execute(text("SELECT 1"))
