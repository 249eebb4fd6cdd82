"""The app factory: every HTTP service gets /health, /metrics, request ids, body limits,
latency metrics and one JSON error shape from here."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import metrics
from services.common.contracts import Error
from services.common.errors import (
    BoigError,
    ClientClosedRequest,
    Overloaded,
    PayloadTooLarge,
    validation_message,
)
from services.common.logging import new_request_id, request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"

T = TypeVar("T")

Readiness = Callable[[], Awaitable[dict[str, Any]]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
Responses = dict[int | str, dict[str, Any]]

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}
ERROR_STATUSES: dict[int, dict[str, Any]] = {
    401: {"description": "No valid API key: send `Authorization: Bearer` or `X-API-Key`."},
    404: {"description": "No such resource for this API key."},
    409: {"description": "The request clashes with the resource's state."},
    413: {"description": "The request body, or an image in it, is over its size limit."},
    415: {"description": "The body's content type is not one this route reads."},
    422: {"description": "The request is malformed or fails validation."},
    429: {"description": "Over a rate or queue limit.", "headers": _RETRY_AFTER},
    500: {"description": "The service failed; its log has the details under the request id."},
    502: {"description": "An internal service was unreachable or answered outside the contract."},
    503: {
        "description": "Busy or not ready (model loading, queue full); retry later.",
        "headers": _RETRY_AFTER,
    },
}
"""The error answers a route may declare, each with the ``Error`` body; 500 every route may give."""


def error_responses(*statuses: int) -> Responses:
    """The OpenAPI ``responses`` of a route that answers ``statuses`` (and 500, which any route
    may answer), for ``responses=`` on the route: each one with the one ``Error`` body."""
    return {
        status: {"model": Error, **ERROR_STATUSES[status]} for status in sorted({*statuses, 500})
    }


def create_service_app(
    *,
    service: str,
    version: str,
    max_body_bytes: int,
    readiness: Readiness | None = None,
    lifespan: Lifespan | None = None,
    description: str = "",
    health_cache_seconds: float = 0.0,
    request_models: tuple[type[BaseModel], ...] = (),
) -> FastAPI:
    """Build a FastAPI app with the plumbing every BOIG service shares; add routes after,
    each with ``responses=error_responses(...)`` naming the errors it answers.

    ``readiness`` answers /health's details; its answer is reused for
    ``health_cache_seconds`` and concurrent probes share one check. ``request_models`` are
    the bodies of routes that read them themselves (``openapi_extra`` refers to them), put
    into the OpenAPI components.
    """
    app = FastAPI(
        title=f"BOIG {service}",
        version=version,
        description=description,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.service = service
    app.openapi = _openapi(app, request_models)  # type: ignore[method-assign]
    probe = _CachedReadiness(readiness, health_cache_seconds) if readiness is not None else None

    @app.get(
        "/health",
        tags=["ops"],
        summary="Liveness and readiness",
        responses={
            503: {"description": "Not ready yet: the same body, with status 'starting'."},
            **error_responses(),
        },
    )
    async def health() -> JSONResponse:
        ready, details = (True, {}) if probe is None else await probe.check()
        body = {"status": "ok" if ready else "starting", "service": service, "version": version}
        return JSONResponse({**body, **details}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    _install_error_handlers(app, service)
    app.add_middleware(_ObservabilityMiddleware, service=service, max_body_bytes=max_body_bytes)
    return app


def _operation_id(route: APIRoute) -> str:
    # The route function's name (score, get_job): FastAPI's default appends the path and
    # method, which client generators turn into names like score_v1_score_post.
    return route.name


def _openapi(app: FastAPI, request_models: tuple[type[BaseModel], ...]) -> Callable[[], Any]:
    """The app's OpenAPI, built once: FastAPI's, plus ``request_models`` in the components,
    less the 422 ``HTTPValidationError`` that FastAPI gives every route with parameters. The
    services never send that body: validation fails as a 422 in the ``Error`` shape, declared
    by the routes that can fail it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in request_models:
                definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, nested in definition.pop("$defs", {}).items():
                    components.setdefault(name, nested)
                components.setdefault(model.__name__, definition)
            fastapi_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    body = responses.get("422", {}).get("content", {}).get("application/json", {})
                    if body.get("schema") == fastapi_422:
                        del responses["422"]
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


class _CachedReadiness:
    """A readiness check run at most once per ``ttl`` seconds, whoever asks (with ttl 0,
    concurrent probes run their checks one after another).

    /health is unauthenticated and probed often (orchestrators, load balancers, anyone):
    without this, each hit would reach the database and every upstream.
    """

    def __init__(self, readiness: Readiness, ttl: float) -> None:
        self._readiness = readiness
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._answer: tuple[bool, dict[str, Any]] | None = None
        self._expires = 0.0

    async def check(self) -> tuple[bool, dict[str, Any]]:
        # Probes that arrive while a check runs wait for its answer instead of starting their own.
        async with self._lock:
            if self._answer is None or time.monotonic() >= self._expires:
                self._answer = await self._run()
                self._expires = time.monotonic() + self._ttl
            ready, details = self._answer
            return ready, dict(details)

    async def _run(self) -> tuple[bool, dict[str, Any]]:
        try:
            details = await self._readiness()
        except Exception as exc:  # a failing probe means not ready, never a crash
            logger.warning("readiness probe failed: %s", exc)
            return False, {"error": type(exc).__name__}
        return bool(details.pop("ready", True)), details


def _error_response(error: BoigError, service: str) -> JSONResponse:
    metrics.ERRORS.labels(service, error.type).inc()
    headers = {}
    if error.retry_after is not None:
        # Rounded up: a client that waits exactly this long must not be refused again.
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(
        error.to_payload(request_id_var.get()), status_code=error.status_code, headers=headers
    )


def _install_error_handlers(app: FastAPI, service: str) -> None:
    async def on_boig_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BoigError)
        if isinstance(exc, Overloaded):
            # Designed backpressure, counted in boig_errors_total: under load an ERROR line
            # per refusal at every hop would bury the real errors.
            logger.info("%s: %s", exc.type, exc.message)
        elif exc.status_code >= 500:
            logger.error("%s: %s", exc.type, exc.message)
        return _error_response(exc, service)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error_response(_ValidationFailed(validation_message(exc, omit=("body",))), service)

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _error_response(_HttpError.of(exc.status_code, str(exc.detail)), service)

    app.add_exception_handler(BoigError, on_boig_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


class _ValidationFailed(BoigError):
    status_code = 422
    type = "invalid_input"


class _HttpError(BoigError):
    @classmethod
    def of(cls, status_code: int, message: str) -> BoigError:
        error = cls(message)
        error.status_code = status_code  # type: ignore[misc]
        error.type = {404: "not_found", 405: "method_not_allowed"}.get(status_code, "http_error")  # type: ignore[misc]
        return error


class _ObservabilityMiddleware:
    """Request id in and out, body size limit, latency and status metrics (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, service: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope["headers"]
        }
        request_id = new_request_id(headers.get(REQUEST_ID_HEADER.lower()))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        status_sent = False
        try:
            declared = headers.get("content-length")
            if declared is not None:
                # The server enforces Content-Length framing, so the header is the body size.
                if not declared.isdigit() or int(declared) > self.max_body_bytes:
                    await self._send_too_large(send)
                    status = 413
                    return
            elif scope.get("method") in ("POST", "PUT", "PATCH"):
                # Chunked bodies are read up to the limit here: FastAPI would turn an error
                # raised mid-parse into a generic 400.
                body = await read_limited(receive, self.max_body_bytes)
                if body is None:
                    await self._send_too_large(send)
                    status = 413
                    return
                receive = _replay(body, receive)

            async def send_with_id(message: Message) -> None:
                nonlocal status, status_sent
                if message["type"] == "http.response.start":
                    status, status_sent = message["status"], True
                    message.setdefault("headers", [])
                    message["headers"] = [
                        *message["headers"],
                        (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                    ]
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                # Caught here rather than by Starlette's outermost handler so the answer
                # still carries the request id and the one error shape.
                logger.exception("unhandled error")
                if status_sent:
                    raise
                status = 500
                await _error_response(
                    BoigError("internal error; see the service log"), self.service
                )(scope, _no_receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "GET")
            metrics.HTTP_REQUESTS.labels(self.service, route, method, str(status)).inc()
            metrics.HTTP_LATENCY.labels(self.service, route, method).observe(elapsed)
            if route not in ("/health", "/metrics"):
                logger.info(
                    "%s %s -> %d in %.1f ms", method, scope.get("path"), status, elapsed * 1000
                )
            request_id_var.reset(token)

    async def _send_too_large(self, send: Send) -> None:
        response = _error_response(
            PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes"),
            self.service,
        )
        response.headers[REQUEST_ID_HEADER] = request_id_var.get() or ""
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def read_limited(receive: Receive, limit: int) -> bytes | None:
    """A request's body read from ``receive``, or None as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``body`` once, then the server's own receive: it answers http.disconnect only when
    the client really goes away, which is what ``cancel_on_disconnect`` listens for."""
    sent = False

    async def receive_replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_replayed


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or ClientClosedRequest once the client has gone away, with ``work``
    cancelled. Call it after the body was read.

    Starlette does not cancel a handler whose client disconnected: without this, a caller
    that timed out would leave its work queued for a model that nobody waits on.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        raise ClientClosedRequest("the client went away before the answer was ready")
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
