"""Generation jobs through the gateway, for the end-to-end tests."""

from __future__ import annotations

import time
from typing import Any

import httpx


def run_generation_job(
    gateway: str, headers: dict[str, str], body: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """Submit ``body`` to ``/v1/generate``, poll its job until it ends (at most ``timeout``
    seconds) and return its final state, which must be ``succeeded``."""
    accepted = httpx.post(f"{gateway}/v1/generate", headers=headers, json=body, timeout=30)
    assert accepted.status_code == 202, accepted.text
    job_url = f"{gateway}{accepted.json()['status_url']}"
    deadline = time.monotonic() + timeout
    while (status := httpx.get(job_url, headers=headers).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["state"] == "succeeded", status
    return status
