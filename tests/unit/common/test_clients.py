"""Service clients: typed errors from upstreams keep their Retry-After across hops, and every
call is timed per hop (calling service, called service, route, outcome)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from services.common import logging as boig_logging
from services.common import metrics
from services.common.app import create_service_app
from services.common.clients import ScorerClient, ServiceClient
from services.common.errors import Overloaded, RateLimited, UpstreamError


def upstream() -> httpx.ASGITransport:
    app = create_service_app(service="upstream", version="0", max_body_bytes=1024)

    @app.get("/busy")
    async def busy() -> None:
        raise Overloaded("the model is busy", retry_after=7.2)

    @app.get("/slow-down")
    async def slow_down() -> None:
        raise RateLimited("too many")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        await asyncio.sleep(0.02)
        return {"status": "ok"}

    return httpx.ASGITransport(app=app)


async def test_an_upstream_refusal_keeps_its_retry_after() -> None:
    async with ServiceClient("http://up", transport=upstream()) as client:
        with pytest.raises(Overloaded) as refused:
            await client._send("GET", "/busy", None)
        assert refused.value.retry_after == 8  # the header's whole seconds, rounded up
        with pytest.raises(RateLimited) as limited:
            await client._send("GET", "/slow-down", None)
        assert limited.value.retry_after is None


def test_a_service_passes_the_retry_after_on_to_its_own_caller() -> None:
    # A scorer-like middle hop that calls the upstream and lets its error through.
    middle = create_service_app(service="middle", version="0", max_body_bytes=1024)

    @middle.get("/work")
    async def work() -> None:
        async with ServiceClient("http://up", transport=upstream()) as client:
            await client._send("GET", "/busy", None)

    response = TestClient(middle).get("/work")
    assert response.status_code == 503 and response.headers["Retry-After"] == "8"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("inf", None),
        ("nan", None),
        ("-3", None),
        ("soon", None),
        ("1e9", 3600.0),
        (None, None),
    ],
)
def test_retry_after_headers_are_finite_and_bounded(
    header: str | None, expected: float | None
) -> None:
    from services.common.clients import _retry_after

    assert _retry_after(header) == expected


def hop_count(caller: str, upstream: str, route: str, outcome: str) -> float:
    labels = {"service": caller, "upstream": upstream, "route": route, "outcome": outcome}
    value = metrics.REGISTRY.get_sample_value(
        "boig_upstream_request_duration_seconds_count", labels
    )
    return value or 0.0


def hop_sum(caller: str, upstream: str, route: str, outcome: str) -> float:
    labels = {"service": caller, "upstream": upstream, "route": route, "outcome": outcome}
    return (
        metrics.REGISTRY.get_sample_value("boig_upstream_request_duration_seconds_sum", labels)
        or 0.0
    )


async def test_every_call_is_timed_by_hop_and_outcome() -> None:
    before = {
        outcome: hop_count("gateway", "scorer", route, outcome)
        for route, outcome in [
            ("/ok", "ok"),
            ("/busy", "server_error"),
            ("/slow-down", "client_error"),
        ]
    }
    took = hop_sum("gateway", "scorer", "/ok", "ok")
    client = ScorerClient("http://up", transport=upstream(), caller="gateway")
    async with client:
        await client._send("GET", "/ok", None)
        with pytest.raises(Overloaded):
            await client._send("GET", "/busy", None)
        with pytest.raises(RateLimited):
            await client._send("GET", "/slow-down", None)
    assert hop_count("gateway", "scorer", "/ok", "ok") == before["ok"] + 1
    assert hop_sum("gateway", "scorer", "/ok", "ok") - took >= 0.02  # the upstream's time
    assert hop_count("gateway", "scorer", "/busy", "server_error") == before["server_error"] + 1
    assert hop_count("gateway", "scorer", "/slow-down", "client_error") == (
        before["client_error"] + 1
    )


@pytest.mark.parametrize(
    ("failure", "outcome", "message"),
    [
        (httpx.ConnectError, "unreachable", "unreachable"),
        (httpx.ReadTimeout, "timeout", "timed out"),
    ],
)
async def test_a_failed_transport_is_timed_as_such(
    failure: type[httpx.TransportError], outcome: str, message: str
) -> None:
    before = hop_count("generator", "scorer", "/score", outcome)

    def fail(request: httpx.Request) -> httpx.Response:
        raise failure("no answer", request=request)

    client = ScorerClient("http://up", transport=httpx.MockTransport(fail), caller="generator")
    async with client:
        with pytest.raises(UpstreamError, match=message):
            await client._send("POST", "/score", b"{}")
    assert hop_count("generator", "scorer", "/score", outcome) == before + 1


def test_the_caller_defaults_to_the_service_the_process_logs_as(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the trainer's DDPO clients rely on: they name no caller.
    monkeypatch.setattr(boig_logging, "_service", None)
    assert ServiceClient("http://up").caller == "unknown"
    monkeypatch.setattr(boig_logging, "_service", "trainer")
    assert ScorerClient("http://up").caller == "trainer"
    assert ScorerClient("http://up", caller="gateway").caller == "gateway"


def test_upstream_buckets_reach_the_longest_client_timeout() -> None:
    from services.gateway.settings import GatewaySettings
    from services.generator.settings import GeneratorSettings
    from services.scorer.settings import ScorerSettings

    longest = max(
        GatewaySettings().upstream_timeout_seconds,
        ScorerSettings().upstream_timeout_seconds,
        GeneratorSettings().upstream_timeout_seconds,
        600.0,  # the trainer's DDPO describer client
    )
    bounds = metrics.UPSTREAM_LATENCY._upper_bounds
    assert max(b for b in bounds if b != float("inf")) >= longest
    # Request-sized calls keep their resolution.
    assert {0.005, 0.1, 1.0, 10.0} <= set(bounds)
