"""The shared app plumbing: health, metrics, request ids, body limits, one error shape."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.common.app import cancel_on_disconnect, create_service_app, error_responses
from services.common.errors import NotFound, RateLimited


class Echo(BaseModel):
    value: int


def make_app(ready: bool = True) -> FastAPI:
    async def readiness() -> dict[str, Any]:
        return {"ready": ready, "model": "tiny"}

    app = create_service_app(
        service="testsvc", version="9.9", max_body_bytes=2048, readiness=readiness
    )

    @app.post("/echo")
    async def echo(body: Echo) -> Echo:
        return body

    @app.get("/missing")
    async def missing() -> None:
        raise NotFound("nothing here")

    @app.get("/slow-down")
    async def slow_down() -> None:
        raise RateLimited("too many", retry_after=7.2)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_app(), raise_server_exceptions=False)


def assert_error(response: Any, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == error_type
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    return body["error"]


def test_health_reports_readiness() -> None:
    assert TestClient(make_app()).get("/health").json() == {
        "status": "ok",
        "service": "testsvc",
        "version": "9.9",
        "model": "tiny",
    }
    response = TestClient(make_app(ready=False)).get("/health")
    assert response.status_code == 503 and response.json()["status"] == "starting"


def counting_app(ttl: float, delay: float = 0.0) -> tuple[FastAPI, list[int]]:
    calls: list[int] = []

    async def readiness() -> dict[str, Any]:
        calls.append(1)
        await asyncio.sleep(delay)
        return {"ready": True, "checks": len(calls)}

    app = create_service_app(
        service="testsvc",
        version="9.9",
        max_body_bytes=2048,
        readiness=readiness,
        health_cache_seconds=ttl,
    )
    return app, calls


def test_health_reuses_its_readiness_answer_within_the_cache_time() -> None:
    app, calls = counting_app(ttl=60)
    with TestClient(app) as client:
        bodies = [client.get("/health").json() for _ in range(20)]
    assert len(calls) == 1
    assert all(body["checks"] == 1 for body in bodies)


def test_health_checks_again_once_the_answer_expires() -> None:
    app, calls = counting_app(ttl=0)
    with TestClient(app) as client:
        for _ in range(3):
            client.get("/health")
    assert len(calls) == 3


async def test_concurrent_health_probes_share_one_check() -> None:
    app, calls = counting_app(ttl=60, delay=0.2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(*(client.get("/health") for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert len(calls) == 1


def test_request_id_is_kept_when_well_formed_and_replaced_otherwise(client: TestClient) -> None:
    assert (
        client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    replaced = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["X-Request-ID"] != "bad id\twith spaces"
    assert len(replaced.headers["X-Request-ID"]) == 32


def test_errors_have_one_shape(client: TestClient) -> None:
    assert assert_error(client.get("/missing"), 404, "not_found")["message"] == "nothing here"
    assert assert_error(client.get("/no-such-route"), 404, "not_found")
    assert assert_error(client.post("/echo", json={"value": "x"}), 422, "invalid_input")
    assert assert_error(client.post("/echo", content=b"{not json"), 422, "invalid_input")
    limited = client.get("/slow-down")
    assert_error(limited, 429, "rate_limited")
    assert limited.headers["Retry-After"] == "8"  # 7.2 s rounded up


def test_unexpected_errors_hide_internals(client: TestClient) -> None:
    error = assert_error(client.get("/boom"), 500, "internal_error")
    assert "secret" not in error["message"]


def test_body_limit_by_header_and_by_stream(client: TestClient) -> None:
    big = b'{"value": 1, "pad": "' + b"x" * 4096 + b'"}'
    assert_error(
        client.post("/echo", content=big, headers={"Content-Type": "application/json"}),
        413,
        "payload_too_large",
    )

    def chunks() -> Any:
        yield b'{"value": 1, "pad": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    streamed = client.post("/echo", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(streamed, 413, "payload_too_large")
    assert client.get("/health").status_code == 200


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    client.post("/echo", json={"value": 1})
    text = client.get("/metrics").text
    assert (
        'boig_http_requests_total{method="POST",route="/echo",service="testsvc",status="200"}'
        in text
    )
    assert "boig_http_request_duration_seconds_bucket" in text


async def test_work_is_cancelled_when_the_client_goes_away() -> None:
    app = create_service_app(service="testsvc", version="9.9", max_body_bytes=2048)
    cancelled = asyncio.Event()

    async def forever() -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    @app.post("/slow")
    async def slow(body: Echo, request: Request) -> Echo:
        await cancel_on_disconnect(request, forever())
        return body

    messages = [
        {"type": "http.request", "body": b'{"value": 1}', "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        message = messages.pop(0)
        if message["type"] == "http.disconnect":
            await asyncio.sleep(0.1)  # the client leaves while the work is under way
        return message

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for chunked in (False, True):  # with a Content-Length, and chunked (the body replayed)
        messages[:] = [
            {"type": "http.request", "body": b'{"value": 1}', "more_body": False},
            {"type": "http.disconnect"},
        ]
        cancelled.clear()
        headers = [(b"content-type", b"application/json")]
        if not chunked:
            headers.append((b"content-length", b"12"))
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/slow",
            "raw_path": b"/slow",
            "query_string": b"",
            "headers": headers,
            "http_version": "1.1",
            "scheme": "http",
            "server": ("test", 80),
            "client": ("127.0.0.1", 1),
            "root_path": "",
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        assert cancelled.is_set()
        assert sent[-2]["status"] == 499


async def test_work_that_ends_first_answers_normally() -> None:
    app = create_service_app(service="testsvc", version="9.9", max_body_bytes=2048)

    async def quick() -> int:
        return 7

    @app.post("/quick")
    async def route(body: Echo, request: Request) -> Echo:
        return Echo(value=await cancel_on_disconnect(request, quick()) + body.value)

    assert TestClient(app).post("/quick", json={"value": 1}).json() == {"value": 8}


class Thing(BaseModel):
    name: str


def test_the_openapi_names_operations_after_their_functions_and_sends_one_error_body() -> None:
    app = create_service_app(
        service="testsvc", version="9.9", max_body_bytes=2048, request_models=(Thing,)
    )

    @app.get("/things/{thing_id}", responses=error_responses(404))
    async def get_thing(thing_id: str) -> dict[str, str]:
        raise NotFound(f"no thing {thing_id}")

    schema = app.openapi()
    operation = schema["paths"]["/things/{thing_id}"]["get"]
    assert operation["operationId"] == "get_thing"
    # FastAPI's own 422 (HTTPValidationError) is gone: the services never send that body.
    assert set(operation["responses"]) == {"200", "404", "500"}
    error = operation["responses"]["404"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    assert {"Error", "ErrorDetail", "Thing"} <= set(components)
