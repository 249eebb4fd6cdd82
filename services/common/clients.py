"""Typed async HTTP clients for the internal services.

Each call sends the current request id, maps an upstream error body back to the same
typed exception (``error_from_payload``), turns transport failures into UpstreamError and is
timed in boig_upstream_request_duration_seconds, labelled with the calling service.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from services.common import metrics, wire
from services.common.contracts import (
    Context,
    DescribeRequest,
    DescribeResponse,
    FeaturizeRequest,
    FeaturizeResponse,
    ImageInput,
    KpiTarget,
    LikelihoodRequest,
    LikelihoodResponse,
    ScoreRequest,
    ScoreResponse,
    Verbalization,
)
from services.common.errors import BoigError, Overloaded, UpstreamError, error_from_payload
from services.common.logging import current_service, request_id_var

ResponseT = TypeVar("ResponseT", bound=BaseModel)
ClientT = TypeVar("ClientT", bound="ServiceClient")
logger = logging.getLogger(__name__)


KEEPALIVE_EXPIRY_SECONDS = 4.0
MAX_RETRY_AFTER_SECONDS = 3600.0
"""An upstream's Retry-After is passed on, at most this long (and never inf or NaN)."""


class ServiceClient:
    """A JSON-over-HTTP client for one internal service.

    ``caller`` names the service that calls (the ``service`` label of the upstream latency
    histogram); by default the one this process configured its logging for.
    """

    service = "service"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        caller: str | None = None,
    ) -> None:
        self.caller = caller or current_service() or "unknown"
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            # An idle connection is dropped here before the server closes its end
            # (BOIG_*_KEEP_ALIVE_SECONDS, 10 s): reusing one the server has just closed
            # fails the request with a ReadError.
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def health(self) -> dict[str, Any]:
        """The service's /health body; a service still starting answers 503 with one too."""
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.service} unreachable: {type(exc).__name__}") from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise UpstreamError(f"{self.service} /health answered {response.status_code}") from exc
        body.setdefault("status", "ok" if response.status_code == 200 else "unavailable")
        return body

    async def _post(
        self,
        path: str,
        body: BaseModel,
        response_model: type[ResponseT],
        *,
        content_type: str = wire.JSON,
    ) -> ResponseT:
        # pydantic's own JSON encoder is several times faster than json.dumps of a dict; a
        # body with images goes as MessagePack, their bytes as they are (services.common.wire).
        content = wire.pack(body) if content_type == wire.MSGPACK else body.model_dump_json()
        response = await self._send("POST", path, content, content_type)
        try:
            return response_model.model_validate_json(response.content)
        except ValidationError as exc:
            raise UpstreamError(f"{self.service} answered {path} outside the contract") from exc

    async def _send(
        self, method: str, path: str, content: bytes | str | None, content_type: str = wire.JSON
    ) -> httpx.Response:
        headers = {"Content-Type": content_type}
        request_id = request_id_var.get()
        if request_id:
            headers["X-Request-ID"] = request_id
        outcome = "canceled"  # unless the call ends otherwise: the caller gave up waiting
        started = time.perf_counter()
        try:
            response = await self._http.request(method, path, content=content, headers=headers)
            # The body is read by now (httpx reads it unless streaming), so this times the hop.
            outcome = _outcome(response.status_code)
        except httpx.TimeoutException as exc:
            outcome = "timeout"
            raise UpstreamError(f"{self.service} timed out on {path}") from exc
        except httpx.HTTPError as exc:
            outcome = "unreachable"
            raise UpstreamError(f"{self.service} unreachable: {type(exc).__name__}") from exc
        finally:
            metrics.UPSTREAM_LATENCY.labels(self.caller, self.service, path, outcome).observe(
                time.perf_counter() - started
            )
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            raise error_from_payload(
                payload,
                status_code=response.status_code,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        return response


class FeaturizerClient(ServiceClient):
    service = "featurizer"

    async def featurize(
        self, images: list[ImageInput], *, detect_objects: bool = True
    ) -> FeaturizeResponse:
        request = FeaturizeRequest(images=images, detect_objects=detect_objects)
        return await self._post("/featurize", request, FeaturizeResponse, content_type=wire.MSGPACK)


class DescriberClient(ServiceClient):
    service = "describer"

    async def describe(self, context: Context, target: KpiTarget) -> DescribeResponse:
        request = DescribeRequest(context=context, target=target)
        return await self._post("/describe", request, DescribeResponse)

    async def likelihood(
        self, context: Context, verbalizations: list[Verbalization], *, kpi_name: str = "likes"
    ) -> LikelihoodResponse:
        request = LikelihoodRequest(
            context=context, kpi_name=kpi_name, verbalizations=verbalizations
        )
        return await self._post("/likelihood", request, LikelihoodResponse)


class ScorerClient(ServiceClient):
    service = "scorer"

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        return await self._post("/score", request, ScoreResponse, content_type=wire.MSGPACK)


class Upstreams:
    """The internal services one app calls, by name. A client the caller passes in stays the
    caller's to close (tests, embedding); those made here are closed by ``aclose``."""

    def __init__(self, *, caller: str, timeout: float) -> None:
        self._caller = caller
        self._timeout = timeout
        self._clients: dict[str, ServiceClient] = {}
        self._owned: list[ServiceClient] = []

    def add(self, kind: type[ClientT], url: str, given: ClientT | None = None) -> ClientT:
        """``given``, else a new client of ``kind`` for ``url``, owned here."""
        client = given
        if client is None:
            client = kind(url, timeout=self._timeout, caller=self._caller)
            self._owned.append(client)
        self._clients[kind.service] = client
        return client

    async def states(self) -> dict[str, str]:
        """Each upstream's /health status ('ok', 'starting'), else the error type reaching it."""
        names = list(self._clients)
        answers = await asyncio.gather(
            *(self._clients[name].health() for name in names), return_exceptions=True
        )
        states: dict[str, str] = {}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BoigError):
                states[name] = answer.type
            elif isinstance(answer, BaseException):
                raise answer
            else:
                states[name] = str(answer["status"])
        return states

    async def aclose(self) -> None:
        for client in self._owned:
            await client.aclose()


def _outcome(status_code: int) -> str:
    if status_code >= 500:
        return "server_error"
    return "client_error" if status_code >= 400 else "ok"


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used between our services)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


async def call_with_retries(
    call: Callable[[], Awaitable[ResponseT]],
    *,
    retries: int,
    what: str,
    max_wait: float = 60.0,
) -> ResponseT:
    """``call()``, again after an overloaded or unreachable upstream, ``retries`` times at
    most: after the upstream's Retry-After, else an exponential backoff (``max_wait`` at
    most). For batch clients (training, evaluation) that can wait; request paths fail fast."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except (Overloaded, UpstreamError) as exc:
            if attempt == retries:
                raise
            wait = min(max_wait, exc.retry_after or 2.0**attempt)
            logger.warning("%s: %s; retrying in %.0f s", what, exc.message, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
