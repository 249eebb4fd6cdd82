"""Fixtures of the reliability tests; the harness itself is in harness.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.generator.tiny_pipeline import prepare_tiny_pipeline
from services.tooling.stack import free_port
from tests.reliability.harness import (
    HERE,
    REDIS_DB,
    Topology,
    redis_or_skip,
    set_upstream_error,
    wait_for,
)


@pytest.fixture(scope="session")
def tiny_sd_path() -> Path:
    return prepare_tiny_pipeline()


@pytest.fixture(scope="session")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("stubs") / "stubs.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(HERE / "stub_upstreams.py"), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, "the stub upstreams exited"
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, "the stub upstreams")
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def topology(tmp_path: Path, upstream_url: str, tiny_sd_path: Path) -> Iterator[Topology]:
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis_or_skip(redis_url)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    set_upstream_error(upstream_url, None)
    running = Topology(
        root=tmp_path, redis_url=redis_url, upstream_url=upstream_url, model_path=tiny_sd_path
    )
    yield running
    running.stop()
    set_upstream_error(upstream_url, None)
