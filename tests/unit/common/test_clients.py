"""Service clients: typed errors from upstreams keep their Retry-After across hops."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from services.common.app import create_service_app
from services.common.clients import ServiceClient
from services.common.errors import Overloaded, RateLimited


def upstream() -> httpx.ASGITransport:
    app = create_service_app(service="upstream", version="0", max_body_bytes=1024)

    @app.get("/busy")
    async def busy() -> None:
        raise Overloaded("the model is busy", retry_after=7.2)

    @app.get("/slow-down")
    async def slow_down() -> None:
        raise RateLimited("too many")

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
