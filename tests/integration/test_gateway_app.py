"""The gateway over HTTP, with stand-in scorer/describer apps reached through ASGI (wiring).

Covers auth, rate limits, validation at the edge, pass-through of typed upstream errors
and the one error shape; API keys run on SQLite and on the real PostgreSQL (marked), the
rate limit on memory and on the real Redis (marked).
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from services.common import metrics, wire
from services.common.app import create_service_app
from services.common.clients import DescriberClient, ScorerClient
from services.common.contracts import (
    CreativeScore,
    DescribeRequest,
    DescribeResponse,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
    Verbalization,
)
from services.common.db import Database
from services.common.errors import BoigError, InvalidImage, ModelUnavailable
from services.common.settings import BatchLimits, ImageLimits
from services.gateway.app import create_app
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings
from tests.servers import REDIS_URL, server_missing

IMAGE_LIMIT = 8192


def png(size: int = 8, *, noise: bool = False) -> bytes:
    image = (
        Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
        if noise
        else Image.new("RGB", (size, size), (200, 30, 30))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD = png()
# Header and the start of the pixel data survive: only the full decode finds the cut.
TRUNCATED = png(32, noise=True)[:2000]
VERBALIZATION = Verbalization(caption="a red square")


class Upstreams:
    """What the stand-ins saw, and the error they should raise next."""

    def __init__(self) -> None:
        self.scored: list[ScoreRequest] = []
        self.described: list[DescribeRequest] = []
        self.error: BoigError | None = None


def scorer_app(state: Upstreams) -> FastAPI:
    app = create_service_app(service="fake-scorer", version="0", max_body_bytes=1 << 26)

    @app.post("/score")
    async def score(
        request: Annotated[ScoreRequest, Depends(wire.body_reader(ScoreRequest))],
    ) -> ScoreResponse:
        state.scored.append(request)
        if state.error is not None:
            raise state.error
        results = [
            CreativeScore(
                id=c.id,
                rank=rank,
                total=1 / rank,
                breakdown={"colors": 1 / rank},
                verbalization=VERBALIZATION,
            )
            for rank, c in enumerate(request.creatives, start=1)
        ]
        return ScoreResponse(
            reward=request.reward,
            weights={"colors": 1.0},
            targets=[],
            results=results,
            models={"describer": ModelInfo(name="fake", version="1")},
        )

    return app


def describer_app(state: Upstreams) -> FastAPI:
    app = create_service_app(service="fake-describer", version="0", max_body_bytes=1 << 26)

    @app.post("/describe")
    async def describe(request: DescribeRequest) -> DescribeResponse:
        state.described.append(request)
        if state.error is not None:
            raise state.error
        return DescribeResponse(
            verbalization=VERBALIZATION,
            text="caption: a red square",
            repairs=[],
            model=ModelInfo(name="boigllm-fake", version="1"),
            prompt_version="p1",
            cached=True,
        )

    return app


class Gateway:
    """A running gateway (TestClient), its stand-ins and a valid key."""

    def __init__(self, client: TestClient, upstreams: Upstreams, store: KeyStore, key: str):
        self.client = client
        self.upstreams = upstreams
        self.store = store
        self.key = key

    def post(
        self,
        path: str,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        return self.client.post(path, headers=headers, **kwargs)


def start_gateway(
    database: Database, *, scorer_url: str | None = None, **overrides: Any
) -> Iterator[Gateway]:
    upstreams = Upstreams()
    settings = GatewaySettings.model_validate(
        {
            "batch_limits": BatchLimits(max_items=3),
            "rate_limit": "1000/minute",
            "max_body_bytes": 256 * 1024,
            "image_limits": ImageLimits(max_bytes=IMAGE_LIMIT),
            "database_url": database.url,
            **overrides,
        }
    )
    scorer = (
        ScorerClient(scorer_url, timeout=2)
        if scorer_url
        else ScorerClient("http://scorer", transport=httpx.ASGITransport(app=scorer_app(upstreams)))
    )
    describer = DescriberClient(
        "http://describer", transport=httpx.ASGITransport(app=describer_app(upstreams))
    )
    app = create_app(settings, scorer=scorer, describer=describer, database=database)
    with TestClient(app) as client:  # the lifespan creates the schema
        store = KeyStore(database)
        yield Gateway(client, upstreams, store, store.create("tests").key)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    yield database
    database.dispose()


@pytest.fixture
def gw(sqlite_db: Database) -> Iterator[Gateway]:
    yield from start_gateway(sqlite_db)


def score_json(creatives: dict[str, str], level: str = "high") -> dict[str, Any]:
    return {
        "context": {"account": "acme", "text": "summer sale"},
        "target": {"name": "likes", "level": level},
        "reward": "match",
        "creatives": [{"id": cid, "image_base64": data} for cid, data in creatives.items()],
    }


def multipart(files: list[tuple[str, bytes]], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = spec or {"context": {"account": "acme"}, "target": {"level": "high"}}
    return {
        "data": {"request": json.dumps(spec)},
        "files": [("creatives", (name, data, "image/png")) for name, data in files],
    }


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "request_id"}
    assert body["error"]["type"] == error_type
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    message: str = body["error"]["message"]
    return message


# --- scoring -----------------------------------------------------------------------------


def test_json_scoring_forwards_to_the_scorer(gw: Gateway) -> None:
    body = score_json({"a": b64(GOOD), "b": b64(png(12))})
    response = gw.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["results"]] == ["a", "b"]
    assert response.json()["results"][0]["rank"] == 1
    (forwarded,) = gw.upstreams.scored
    assert forwarded == ScoreRequest.model_validate(body)


def test_multipart_scoring_names_creatives_after_their_files(gw: Gateway) -> None:
    files = [("summer ad.png", GOOD), ("summer ad.png", png(10)), ("../x/winter.png", png(9))]
    response = gw.post("/v1/score", **multipart(files))
    assert response.status_code == 200, response.text
    (forwarded,) = gw.upstreams.scored
    assert [c.id for c in forwarded.creatives] == ["summer_ad", "summer_ad-2", "winter"]
    assert forwarded.creatives[0].data == GOOD
    assert forwarded.context.account == "acme"
    assert [r["id"] for r in response.json()["results"]] == ["summer_ad", "summer_ad-2", "winter"]


def test_x_api_key_header_works_too(gw: Gateway) -> None:
    response = gw.client.post(
        "/v1/score", headers={"X-API-Key": gw.key}, json=score_json({"a": b64(GOOD)})
    )
    assert response.status_code == 200, response.text


def test_describe_forwards_to_the_describer(gw: Gateway) -> None:
    body = {"context": {"account": "acme", "text": "new shoes"}, "target": {"level": "medium"}}
    response = gw.post("/v1/describe", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "caption: a red square"
    assert gw.upstreams.described == [DescribeRequest.model_validate(body)]


# --- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/score", "/v1/describe"])
def test_missing_wrong_and_revoked_keys_are_401(gw: Gateway, path: str) -> None:
    body = score_json({"a": b64(GOOD)})
    message = assert_error(gw.client.post(path, json=body), 401, "unauthorized")
    assert "missing API key" in message
    assert_error(gw.post(path, key=gw.key[:-2] + "zz", json=body), 401, "unauthorized")
    assert_error(gw.post(path, key="not-even-a-key", json=body), 401, "unauthorized")
    basic = gw.client.post(path, json=body, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_error(basic, 401, "unauthorized")
    prefix = gw.key.split("_")[1]
    gw.store.revoke(prefix)
    assert "revoked" in assert_error(gw.post(path, json=body), 401, "unauthorized")
    assert gw.upstreams.scored == [] and gw.upstreams.described == []


def test_unauthenticated_requests_are_refused_before_validation(gw: Gateway) -> None:
    assert_error(gw.client.post("/v1/score", content=b"garbage"), 401, "unauthorized")
    # Not parsed for an anonymous client: neither 422 for the garbage nor 413 for the size.
    for body in (b"garbage", b"{" * (200 * 1024)):
        response = gw.client.post(
            "/v1/describe", content=body, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 401, "unauthorized")


def test_describe_bodies_beyond_what_a_request_needs_are_413(gw: Gateway) -> None:
    big = {"context": {"account": "acme", "text": "x" * (80 * 1024)}}
    assert_error(gw.post("/v1/describe", json=big), 413, "payload_too_large")
    assert_error(gw.post("/v1/describe", content=b"not json"), 422, "invalid_input")
    # A chunked body declares no length: it is refused once the bytes read pass the limit.
    chunked = (b"x" * 16 * 1024 for _ in range(8))
    assert_error(gw.post("/v1/describe", content=chunked), 413, "payload_too_large")
    assert gw.upstreams.described == []


# --- rate limit --------------------------------------------------------------------------


def test_guessing_one_key_is_refused_before_lookup_without_locking_out_other_keys(
    sqlite_db: Database,
) -> None:
    for gateway in start_gateway(sqlite_db, auth_failure_limit="3/minute"):
        body = {"context": {"account": "a"}}
        guess = "boig_00000000_guess"
        for _ in range(3):
            response = gateway.post("/v1/describe", key=guess, json=body)
            assert_error(response, 401, "unauthorized")
        refused = gateway.post("/v1/describe", key=guess, json=body)
        assert "failed authentications" in assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # Another key from the same address (another prefix) still works.
        assert gateway.post("/v1/describe", json=body).status_code == 200
        assert gateway.client.get("/health").status_code == 200


def test_guessing_across_prefixes_locks_out_the_address(sqlite_db: Database) -> None:
    for gateway in start_gateway(
        sqlite_db, auth_failure_limit="3/minute", auth_failure_address_limit="5/minute"
    ):
        body = {"context": {"account": "a"}}
        for index in range(5):
            guess = f"boig_{index:08x}_guess"
            assert_error(gateway.post("/v1/describe", key=guess, json=body), 401, "unauthorized")
        # Now every key from this address waits, a valid one included: no lookup at all.
        assert_error(gateway.post("/v1/describe", json=body), 429, "rate_limited")
        assert gateway.upstreams.described == []


def test_successful_authentications_do_not_count_as_failures(sqlite_db: Database) -> None:
    for gateway in start_gateway(sqlite_db, auth_failure_limit="2/minute"):
        for _ in range(5):
            assert (
                gateway.post("/v1/describe", json={"context": {"account": "a"}}).status_code == 200
            )


def check_rate_limit(gateway: Gateway) -> None:
    body = score_json({"a": b64(GOOD)})
    assert gateway.post("/v1/score", json=body).status_code == 200
    assert gateway.post("/v1/describe", json={"context": {"account": "a"}}).status_code == 200
    refused = gateway.post("/v1/score", json=body)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    other_key = gateway.store.create("other").key
    assert gateway.post("/v1/score", key=other_key, json=body).status_code == 200
    assert gateway.client.get("/health").status_code == 200


def test_over_the_rate_limit_is_429_with_retry_after(sqlite_db: Database) -> None:
    for gateway in start_gateway(sqlite_db, rate_limit="2/minute"):
        check_rate_limit(gateway)
        metrics = gateway.client.get("/metrics").text
        assert "boig_rate_limited_total" in metrics


@pytest.mark.redis
def test_rate_limit_on_redis(sqlite_db: Database) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        server_missing(f"Redis at {REDIS_URL} is unreachable: {exc}")
    for gateway in start_gateway(
        sqlite_db,
        rate_limit="2/minute",
        rate_limit_storage_url=REDIS_URL,
        rate_limit_key_prefix=f"boig_test_{secrets.token_hex(4)}",
    ):
        try:
            check_rate_limit(gateway)
        finally:
            gateway.client.app.state.rate_limiter.reset()  # type: ignore[attr-defined]


# --- validation at the edge --------------------------------------------------------------


def test_creatives_past_the_requests_pixel_budget_are_413_before_the_scorer(
    sqlite_db: Database,
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buffer, format="PNG")
    big = b64(buffer.getvalue())
    limits = ImageLimits(max_bytes=IMAGE_LIMIT, max_request_pixels=100_000)
    for gateway in start_gateway(sqlite_db, image_limits=limits):
        assert gateway.post("/v1/score", json=score_json({"a": big})).status_code == 200
        refused = gateway.post("/v1/score", json=score_json({"a": big, "b": big}))
        assert "120000 pixels together" in assert_error(refused, 413, "payload_too_large")
        assert len(gateway.upstreams.scored) == 1


def test_too_many_creatives_is_422(gw: Gateway) -> None:
    creatives = {f"c{i}": b64(GOOD) for i in range(4)}
    message = assert_error(gw.post("/v1/score", json=score_json(creatives)), 422, "invalid_input")
    assert "limit is 3" in message
    files = [(f"c{i}.png", GOOD) for i in range(4)]
    assert_error(gw.post("/v1/score", **multipart(files)), 422, "invalid_input")
    assert gw.upstreams.scored == []


@pytest.mark.parametrize(
    ("payload", "error_type", "fragment"),
    [
        # A malformed field, named by where it is; what decodes but is no image names its id.
        ("not base64 at all!", "invalid_input", "creatives.1.image_base64: Value error, not valid"),
        (b64(TRUNCATED), "invalid_image", "truncated"),
        (b64(b"GIF89a this is not an image"), "invalid_image", "not a readable image"),
        (b64(b"hello"), "invalid_image", "not a readable image"),
        ("", "invalid_input", "creatives.1.image_base64"),
    ],
    ids=["bad-base64", "truncated", "fake-gif", "text", "empty"],
)
def test_undecodable_creatives_are_422_naming_the_creative(
    gw: Gateway, payload: str, error_type: str, fragment: str
) -> None:
    body = score_json({"ok": b64(GOOD), "bad": payload})
    message = assert_error(gw.post("/v1/score", json=body), 422, error_type)
    assert fragment in message
    if error_type == "invalid_image":
        assert "'bad'" in message
    assert gw.upstreams.scored == []  # garbage never reaches the scorer


def test_undecodable_uploads_are_422(gw: Gateway) -> None:
    for data, fragment in [(TRUNCATED, "truncated"), (b"", "empty"), (b"%PDF-1.7", "readable")]:
        files = [("ok.png", GOOD), ("broken.png", data)]
        message = assert_error(gw.post("/v1/score", **multipart(files)), 422, message_type(data))
        assert "broken" in message and fragment in message
    assert gw.upstreams.scored == []


def message_type(data: bytes) -> str:
    return "invalid_input" if not data else "invalid_image"


def test_oversized_creatives_are_413(gw: Gateway) -> None:
    big = png(96, noise=True)
    assert len(big) > IMAGE_LIMIT
    body = score_json({"ok": b64(GOOD), "huge": b64(big)})
    assert "'huge'" in assert_error(gw.post("/v1/score", json=body), 413, "payload_too_large")
    files = [("huge.png", big)]
    assert "'huge'" in assert_error(
        gw.post("/v1/score", **multipart(files)), 413, "payload_too_large"
    )
    too_big_body = score_json({"ok": "A" * 300_000})
    assert_error(gw.post("/v1/score", json=too_big_body), 413, "payload_too_large")
    assert gw.upstreams.scored == []


def test_malformed_requests_are_422(gw: Gateway) -> None:
    assert_error(gw.post("/v1/score", content=b"{not json"), 422, "invalid_input")
    assert_error(
        gw.post("/v1/score", content=b"a=b", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    no_request_part = {"files": [("creatives", ("a.png", GOOD, "image/png"))]}
    assert "'request'" in assert_error(
        gw.post("/v1/score", **no_request_part), 422, "invalid_input"
    )
    spec = json.dumps({"context": {"account": "a"}}).encode()
    response = gw.post(
        "/v1/score",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
        content=b'--x\r\nContent-Disposition: form-data; name="request"\r\n\r\n'
        + spec
        + b"\r\n--x--\r\n",
    )
    assert "at least one" in assert_error(response, 422, "invalid_input")


def test_unknown_kpi_level_is_422(gw: Gateway) -> None:
    body = score_json({"a": b64(GOOD)}, level="viral")
    assert "target.level" in assert_error(gw.post("/v1/score", json=body), 422, "invalid_input")
    spec = {"context": {"account": "acme"}, "target": {"level": "viral"}}
    assert_error(gw.post("/v1/score", **multipart([("a.png", GOOD)], spec)), 422, "invalid_input")
    describe = {"context": {"account": "acme"}, "target": {"level": "viral"}}
    assert_error(gw.post("/v1/describe", json=describe), 422, "invalid_input")


# --- upstreams ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [(InvalidImage("creative 'a' is too dark to see"), 422), (ModelUnavailable("loading"), 503)],
)
def test_upstream_typed_errors_pass_through(gw: Gateway, error: BoigError, status: int) -> None:
    gw.upstreams.error = error
    response = gw.post("/v1/score", json=score_json({"a": b64(GOOD)}))
    assert assert_error(response, status, error.type) == error.message
    describe = gw.post("/v1/describe", json={"context": {"account": "a"}})
    assert assert_error(describe, status, error.type) == error.message
    gw.upstreams.error = None
    assert gw.post("/v1/score", json=score_json({"a": b64(GOOD)})).status_code == 200


def test_upstream_down_is_502_and_the_gateway_stays_healthy(sqlite_db: Database) -> None:
    for gateway in start_gateway(sqlite_db, scorer_url="http://127.0.0.1:1"):
        response = gateway.post("/v1/score", json=score_json({"a": b64(GOOD)}))
        assert "unreachable" in assert_error(response, 502, "upstream_error")
        health = gateway.client.get("/health")
        assert health.status_code == 200
        upstreams = health.json()["upstreams"]
        assert upstreams == {"scorer": "upstream_error", "describer": "ok", "queue": "ok"}
        assert gateway.post("/v1/describe", json={"context": {"account": "a"}}).status_code == 200


def test_its_calls_to_the_scorer_are_timed_as_the_gateway_s(sqlite_db: Database) -> None:
    """The clients the gateway builds from its settings label their hop gateway -> scorer."""
    labels = {"service": "gateway", "upstream": "scorer", "route": "/score"}

    def calls() -> float:
        name = "boig_upstream_request_duration_seconds_count"
        value = metrics.REGISTRY.get_sample_value(name, {**labels, "outcome": "unreachable"})
        return value or 0.0

    before = calls()
    settings = GatewaySettings(
        database_url=sqlite_db.url, scorer_url="http://127.0.0.1:1", upstream_timeout_seconds=2
    )
    with TestClient(create_app(settings, database=sqlite_db)) as client:
        key = KeyStore(sqlite_db).create("tests").key
        response = client.post(
            "/v1/score",
            json=score_json({"a": b64(GOOD)}),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert_error(response, 502, "upstream_error")
    assert calls() == before + 1


def test_health_after_a_run_of_errors(gw: Gateway) -> None:
    for _ in range(3):
        gw.client.post("/v1/score", content=b"x")
        gw.post("/v1/score", json=score_json({"a": "%%%"}))
    health = gw.client.get("/health")
    assert health.status_code == 200
    assert health.json()["database"] == "ok"
    assert gw.post("/v1/score", json=score_json({"a": b64(GOOD)})).status_code == 200


# --- OpenAPI -----------------------------------------------------------------------------


def test_openapi_declares_auth_and_every_score_body(gw: Gateway) -> None:
    schema = gw.client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["BearerKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["BearerKey"]["description"],
    }
    assert schemes["ApiKeyHeader"]["in"] == "header"
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    for path in ("/v1/score", "/v1/describe"):
        security = schema["paths"][path]["post"]["security"]
        assert {"BearerKey": []} in security and {"ApiKeyHeader": []} in security
    content = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/msgpack", "multipart/form-data"}
    # Every reference resolves (the score body's model is added by hand).
    components = schema["components"]["schemas"]
    refs = {ref.rsplit("/", 1)[1] for ref in _refs(schema)}
    assert refs <= set(components), refs - set(components)
    assert "ScoreRequest" in refs
    assert gw.client.get("/docs").status_code == 200


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# --- PostgreSQL --------------------------------------------------------------------------


@pytest.mark.postgres
def test_api_keys_on_postgresql(postgres_db: Database) -> None:
    for gateway in start_gateway(postgres_db):
        body = score_json({"a": b64(GOOD)})
        assert gateway.post("/v1/score", json=body).status_code == 200
        assert_error(
            gateway.post("/v1/score", key=gateway.key + "x", json=body), 401, "unauthorized"
        )
        gateway.store.revoke(gateway.key.split("_")[1])
        assert_error(gateway.post("/v1/score", json=body), 401, "unauthorized")
        assert gateway.client.get("/health").json()["database"] == "ok"
