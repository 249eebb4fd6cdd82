"""Every service's OpenAPI says what the service sends: stable, readable operationIds, every
error answer in the one ``Error`` shape (never FastAPI's ``HTTPValidationError``), and every
documented error of every operation provoked here, in-process, and answered as documented.

The reverse direction, that no test anywhere sees an answer its operation does not document,
is checked at the end of each run by tests/conftest.py (tests/documented_statuses.py).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from services.common.clients import DescriberClient, FeaturizerClient, ScorerClient
from services.common.contracts import Error
from services.common.db import Database
from services.common.errors import RateLimited
from services.common.jobs import JobStore
from services.common.queue import QueueSettings, create_celery_app
from services.describer.app import create_app as create_describer
from services.describer.settings import DescriberSettings
from services.featurizer.app import create_app as create_featurizer
from services.featurizer.settings import FeaturizerSettings
from services.gateway.app import create_app as create_gateway
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings
from services.scorer.app import create_app as create_scorer
from services.scorer.settings import ScorerSettings
from services.tooling.contracts import SERVICES, service_openapi
from tests.documented_statuses import Operation, documented_statuses
from tests.job_records import images, outcome

OPERATION_IDS = {
    "gateway": {
        ("GET", "/health"): "health",
        ("POST", "/v1/score"): "score",
        ("POST", "/v1/describe"): "describe",
        ("POST", "/v1/generate"): "generate",
        ("GET", "/v1/jobs/{job_id}"): "get_job",
        ("DELETE", "/v1/jobs/{job_id}"): "cancel_job",
        ("GET", "/v1/images/{image_id}"): "get_image",
        ("POST", "/v1/feedback"): "submit_feedback",
        ("GET", "/v1/feedback"): "list_feedback",
        ("GET", "/v1/feedback/{feedback_id}"): "get_feedback",
        ("GET", "/v1/checkpoints"): "list_checkpoints",
        ("GET", "/v1/retrain/decisions"): "list_retrain_decisions",
        ("GET", "/v1/retrain/decisions/{decision_id}"): "get_retrain_decision",
    },
    "scorer": {("GET", "/health"): "health", ("POST", "/score"): "score"},
    "describer": {
        ("GET", "/health"): "health",
        ("POST", "/describe"): "describe",
        ("POST", "/likelihood"): "likelihood",
    },
    "featurizer": {("GET", "/health"): "health", ("POST", "/featurize"): "featurize"},
}
"""Client generators name their methods after these: a rename breaks every generated client."""

ERROR_REF = {"$ref": "#/components/schemas/Error"}
HEALTH = ("GET", "/health")
"""/health answers 503 with its own body (status 'starting'), not an error."""
ANY_ROUTE = 500
"""Documented on every operation: the factory answers any unhandled failure with it; provoked
in tests/unit/common/test_app_factory.py."""

BODY_LIMIT = 64 * 1024
JSON_LIMIT = 1024


def png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SCORE = {
    "context": {"account": "acme", "text": "summer sale"},
    "target": {"level": "high"},
    "creatives": [{"id": "a", "image_base64": png_base64()}],
}
DESCRIBE = {"context": {"account": "acme", "text": "summer sale"}, "target": {"level": "high"}}
LIKELIHOOD = {"context": {"account": "acme"}, "verbalizations": [{"caption": "a red square"}]}
FEATURIZE = {"images": [{"id": "a", "image_base64": png_base64()}], "detect_objects": False}
GENERATE = {"context": {"account": "acme", "text": "summer sale"}, "target": {"level": "high"}}
FEEDBACK = {"image_id": "no-such-image", "kpi_name": "likes", "kpi_value": 1}


class Upstreams:
    """The scorer, describer and featurizer as the gateway and scorer reach them: down (502)
    or busy (503, in the Error shape with Retry-After), as the provocation sets."""

    def __init__(self) -> None:
        self.mode = "busy"

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        body = {"error": {"type": "overloaded", "message": "busy", "request_id": None}}
        return httpx.Response(503, json=body, headers={"Retry-After": "1"})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


@dataclass
class Gateway:
    client: TestClient
    key: str
    db: Database

    def request(self, method: str, url: str, *, key: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return self.client.request(method, url, headers=headers, **kwargs)


@dataclass
class Stack:
    """Every app, some twice in another state, with the fakes the provocations need."""

    upstreams: Upstreams
    gateway: Gateway
    gateway_rate_limited: Gateway  # one request per key per hour
    gateway_storage_down: Gateway  # the rate-limit Redis refuses connections
    gateway_queue_full: Gateway  # a queue of one job
    gateway_cold: TestClient  # its database unreachable
    scorer: TestClient
    describer: TestClient  # no model to load
    featurizer: TestClient
    featurizer_cold: TestClient  # lifespan not run: the featurizer not ready


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("openapi-errors")
    upstreams = Upstreams()
    celery = create_celery_app(
        QueueSettings(
            broker_url=f"sqla+sqlite:///{root / 'broker.db'}",
            result_backend=f"db+sqlite:///{root / 'results.db'}",
        ),
        name="test-openapi-errors",
    )

    def gateway_app(name: str, database: Database, **overrides: Any) -> FastAPI:
        settings = GatewaySettings.model_validate(
            {
                "rate_limit": "1000/minute",
                "max_body_bytes": BODY_LIMIT,
                "max_json_body_bytes": JSON_LIMIT,
                "image_limits": {"max_bytes": 8192},
                "database_url": database.url,
                "artifact_root": root / name / "artifacts",
                **overrides,
            }
        )
        return create_gateway(
            settings,
            scorer=ScorerClient("http://scorer", transport=upstreams.transport()),
            describer=DescriberClient("http://describer", transport=upstreams.transport()),
            database=database,
            celery=celery,
        )

    with ExitStack() as stack:

        def gateway(name: str, **overrides: Any) -> Gateway:
            (root / name).mkdir()
            database = Database(f"sqlite:///{root / name / 'gateway.db'}")
            stack.callback(database.dispose)
            client = stack.enter_context(TestClient(gateway_app(name, database, **overrides)))
            return Gateway(client, KeyStore(database).create("tests").key, database)

        def started(app: FastAPI) -> TestClient:
            return stack.enter_context(TestClient(app))

        # A folder where the database file should be: every connection fails.
        (root / "cold").mkdir()
        cold_database = Database(f"sqlite:///{root / 'cold'}")
        stack.callback(cold_database.dispose)
        scorer = create_scorer(
            ScorerSettings(max_body_bytes=BODY_LIMIT),
            featurizer=FeaturizerClient("http://featurizer", transport=upstreams.transport()),
            describer=DescriberClient("http://describer", transport=upstreams.transport()),
        )
        featurizer_settings = FeaturizerSettings(detector_backend="none", max_body_bytes=BODY_LIMIT)
        yield Stack(
            upstreams=upstreams,
            gateway=gateway("main"),
            gateway_rate_limited=gateway("limited", rate_limit="1/hour", poll_rate_limit="1/hour"),
            gateway_storage_down=gateway(
                "storage-down", rate_limit_storage_url="redis://127.0.0.1:1"
            ),
            gateway_queue_full=gateway("queue-full", max_queued_jobs=1),
            gateway_cold=TestClient(gateway_app("cold", cold_database)),
            scorer=started(scorer),
            describer=started(
                create_describer(
                    DescriberSettings(model_path=root / "no-model", max_body_bytes=BODY_LIMIT)
                )
            ),
            featurizer=started(create_featurizer(featurizer_settings)),
            featurizer_cold=TestClient(create_featurizer(featurizer_settings)),
        )


# --- the provocations ----------------------------------------------------------------------

Send = Callable[[Stack], httpx.Response]
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Provocation:
    service: str
    method: str
    path: str
    status: int
    how: str
    send: Send

    @property
    def operation(self) -> Operation:
        return (self.method, self.path)


def request(app: str, method: str, url: str, **kwargs: Any) -> Send:
    """``method url`` to the Stack's ``app`` (a gateway sends its key unless ``key=False``)."""

    def send(stack: Stack) -> httpx.Response:
        response: httpx.Response = getattr(stack, app).request(method, url, **kwargs)
        return response

    return send


def malformed(app: str, path: str) -> Send:
    return request(app, "POST", path, content=b"{not json", headers=JSON)


def plain_text(app: str, path: str) -> Send:
    return request(app, "POST", path, content=b"x", headers={"Content-Type": "text/plain"})


def oversized(app: str, path: str, limit: int = BODY_LIMIT) -> Send:
    return request(app, "POST", path, content=b"x" * (limit + 1), headers=JSON)


def twice(send: Send) -> Send:
    def send_again(stack: Stack) -> httpx.Response:
        send(stack)
        return send(stack)

    return send_again


def upstreams(mode: str, send: Send) -> Send:
    def send_with(stack: Stack) -> httpx.Response:
        stack.upstreams.mode = mode
        return send(stack)

    return send_with


def idempotency_clash(stack: Stack) -> httpx.Response:
    key = {"Idempotency-Key": "clash"}
    first = stack.gateway.request("POST", "/v1/generate", json=GENERATE, headers=key)
    assert first.status_code == 202, first.text
    other = {**GENERATE, "count": 2}
    return stack.gateway.request("POST", "/v1/generate", json=other, headers=key)


def feedback_clash(stack: Stack) -> httpx.Response:
    body = {
        "image_base64": png_base64(),
        "context": {"account": "acme", "posted_at": "2024-05-01T12:00:00Z"},
        "kpi_name": "likes",
        "kpi_value": 120,
    }
    first = stack.gateway.request("POST", "/v1/feedback", json=body)
    assert first.status_code in (200, 201), first.text
    return stack.gateway.request("POST", "/v1/feedback", json={**body, "kpi_value": 95})


def cancel_finished_job(stack: Stack) -> httpx.Response:
    job_id = stack.gateway.request("POST", "/v1/generate", json=GENERATE).json()["job_id"]
    store = JobStore(stack.gateway.db)
    lease = store.claim(job_id, worker="w", lease_seconds=60)
    assert lease is not None
    assert store.complete(lease, outcome=outcome(), images=images(1))
    return stack.gateway.request("DELETE", f"/v1/jobs/{job_id}")


KEYED_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/score", {"json": SCORE}),
    ("POST", "/v1/describe", {"json": DESCRIBE}),
    ("POST", "/v1/generate", {"json": GENERATE}),
    ("GET", "/v1/jobs/{job_id}", {}),
    ("DELETE", "/v1/jobs/{job_id}", {}),
    ("GET", "/v1/images/{image_id}", {}),
    ("POST", "/v1/feedback", {"json": FEEDBACK}),
    ("GET", "/v1/feedback", {}),
    ("GET", "/v1/feedback/{feedback_id}", {}),
    ("GET", "/v1/checkpoints", {}),
    ("GET", "/v1/retrain/decisions", {}),
    ("GET", "/v1/retrain/decisions/{decision_id}", {}),
]
BODY_LIMITS = {
    "/v1/score": BODY_LIMIT,
    "/v1/describe": JSON_LIMIT,
    "/v1/generate": JSON_LIMIT,
    "/v1/feedback": BODY_LIMIT,
}
"""/v1/score and /v1/feedback take images, so only the body limit; the others read at most
JSON_LIMIT."""
INTERNAL_BODY_ROUTES = [
    ("scorer", "/score"),
    ("describer", "/describe"),
    ("describer", "/likelihood"),
    ("featurizer", "/featurize"),
]
IMAGE_ROUTES = {"/score", "/featurize"}
"""Internal routes whose bodies carry images: JSON or MessagePack, anything else a 415."""
UPSTREAM_ROUTES: dict[str, dict[str, Any]] = {"/v1/score": SCORE, "/v1/describe": DESCRIBE}


def _url(path: str) -> str:
    return (
        path.replace("{job_id}", "no-such-job")
        .replace("{image_id}", "no-such-image")
        .replace("{feedback_id}", "no-such-feedback")
        .replace("{decision_id}", "no-such-decision")
    )


def _provocations() -> list[Provocation]:
    found: list[Provocation] = []

    def adder(service: str) -> Callable[[str, int, str, Send], None]:
        def add(operation: str, status: int, how: str, send: Send) -> None:
            method, path = operation.split()
            found.append(Provocation(service, method, path, status, how, send))

        return add

    gateway = adder("gateway")
    for method, path, body in KEYED_ROUTES:
        operation, url = f"{method} {path}", _url(path)
        gateway(operation, 401, "no key", request("gateway", method, url, key=False, **body))
        limited = twice(request("gateway_rate_limited", method, url, **body))
        gateway(operation, 429, "a 1/hour key's second request", limited)
        storage_down = request("gateway_storage_down", method, url, **body)
        gateway(operation, 503, "rate-limit storage down", storage_down)
        if "{" in path:
            gateway(operation, 404, "unknown id", request("gateway", method, url))
    for path, limit in BODY_LIMITS.items():
        gateway(f"POST {path}", 413, "body over its limit", oversized("gateway", path, limit))
        gateway(f"POST {path}", 415, "a text/plain body", plain_text("gateway", path))
        gateway(f"POST {path}", 422, "malformed JSON", malformed("gateway", path))
    for path, body in UPSTREAM_ROUTES.items():
        valid = request("gateway", "POST", path, json=body)
        gateway(f"POST {path}", 502, "upstream down", upstreams("down", valid))
        gateway(f"POST {path}", 503, "upstream busy", upstreams("busy", valid))
    gateway("POST /v1/generate", 409, "idempotency key reused", idempotency_clash)
    unknown_image = request("gateway", "POST", "/v1/feedback", json=FEEDBACK)
    gateway("POST /v1/feedback", 404, "unknown image_id", unknown_image)
    gateway("POST /v1/feedback", 409, "another value, no correction", feedback_clash)
    bad_page = request("gateway", "GET", "/v1/feedback", params={"limit": 0})
    gateway("GET /v1/feedback", 422, "limit 0", bad_page)
    bad_name = request("gateway", "GET", "/v1/checkpoints", params={"name": "../etc"})
    gateway("GET /v1/checkpoints", 422, "a name that is no registry entry", bad_name)
    bad_action = request("gateway", "GET", "/v1/retrain/decisions", params={"action": "delete"})
    gateway("GET /v1/retrain/decisions", 422, "an unknown action", bad_action)
    second_job = twice(request("gateway_queue_full", "POST", "/v1/generate", json=GENERATE))
    gateway("POST /v1/generate", 503, "a queue of one job", second_job)
    gateway("DELETE /v1/jobs/{job_id}", 409, "job finished", cancel_finished_job)
    gateway("GET /health", 503, "database unreachable", request("gateway_cold", "GET", "/health"))

    for service, path in INTERNAL_BODY_ROUTES:
        add = adder(service)
        add(f"POST {path}", 413, "body over its limit", oversized(service, path))
        add(f"POST {path}", 422, "malformed JSON", malformed(service, path))
        if path in IMAGE_ROUTES:
            add(f"POST {path}", 415, "a text/plain body", plain_text(service, path))

    scorer = adder("scorer")
    valid = request("scorer", "POST", "/score", json=SCORE)
    scorer("POST /score", 502, "upstreams down", upstreams("down", valid))
    scorer("POST /score", 503, "upstreams busy", upstreams("busy", valid))
    scorer(
        "GET /health", 503, "upstreams busy", upstreams("busy", request("scorer", "GET", "/health"))
    )

    describer = adder("describer")
    for path, body in (("/describe", DESCRIBE), ("/likelihood", LIKELIHOOD)):
        describer(f"POST {path}", 503, "no model", request("describer", "POST", path, json=body))
    describer("GET /health", 503, "no model", request("describer", "GET", "/health"))

    featurizer = adder("featurizer")
    cold = request("featurizer_cold", "POST", "/featurize", json=FEATURIZE)
    featurizer("POST /featurize", 503, "not started", cold)
    featurizer("GET /health", 503, "not started", request("featurizer_cold", "GET", "/health"))
    return found


PROVOCATIONS = _provocations()


@pytest.fixture(scope="module")
def openapis() -> dict[str, dict[str, Any]]:
    return {service: service_openapi(service) for service in SERVICES}


def _operations(openapi: dict[str, Any]) -> Iterator[tuple[Operation, dict[str, Any]]]:
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            yield (method.upper(), path), operation


# --- the documents -------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_operation_ids_are_the_stable_readable_names(
    service: str, openapis: dict[str, dict[str, Any]]
) -> None:
    ids = {operation: doc["operationId"] for operation, doc in _operations(openapis[service])}
    assert ids == OPERATION_IDS[service]
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in ids.values())
    assert len(set(ids.values())) == len(ids)


@pytest.mark.parametrize("service", SERVICES)
def test_no_operation_advertises_fastapi_validation_errors(
    service: str, openapis: dict[str, dict[str, Any]]
) -> None:
    document = json.dumps(openapis[service])
    assert "HTTPValidationError" not in document
    assert "ValidationError" not in openapis[service]["components"]["schemas"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_answer_is_documented_with_the_error_body(
    service: str, openapis: dict[str, dict[str, Any]]
) -> None:
    openapi = openapis[service]
    assert {"Error", "ErrorDetail"} <= set(openapi["components"]["schemas"])
    for operation, doc in _operations(openapi):
        errors = {int(status): answer for status, answer in doc["responses"].items()}
        assert ANY_ROUTE in errors, operation
        for status, answer in errors.items():
            if status < 400 or (operation == HEALTH and status == 503):
                continue
            assert answer["content"]["application/json"]["schema"] == ERROR_REF, (operation, status)


# --- the answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "provocation",
    PROVOCATIONS,
    ids=[f"{p.service} {p.method} {p.path} {p.status} ({p.how})" for p in PROVOCATIONS],
)
def test_each_provoked_error_is_documented_and_in_the_error_shape(
    provocation: Provocation, stack: Stack, openapis: dict[str, dict[str, Any]]
) -> None:
    documented = documented_statuses(openapis[provocation.service])[provocation.operation]
    response = provocation.send(stack)
    assert response.status_code == provocation.status, response.text
    assert provocation.status in documented
    if provocation.operation == HEALTH:
        assert response.json()["status"] == "starting"
        return
    error = Error.model_validate(response.json())
    assert error.error.request_id == response.headers["X-Request-ID"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_documented_error_is_provoked_here(
    service: str, openapis: dict[str, dict[str, Any]]
) -> None:
    documented = {
        (operation, status)
        for operation, statuses in documented_statuses(openapis[service]).items()
        for status in statuses
        if status >= 400 and status != ANY_ROUTE
    }
    provoked = {(p.operation, p.status) for p in PROVOCATIONS if p.service == service}
    assert documented == provoked


def test_the_error_model_is_the_body_every_error_is_sent_in() -> None:
    """The Error contract and BoigError.to_payload describe the same body."""
    payload = RateLimited("slow down", retry_after=3).to_payload("req-1")
    assert Error.model_validate(payload).model_dump() == payload
