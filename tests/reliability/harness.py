"""The reliability tests' harness: gateway, generator worker(s) and Redis as processes.

The worker is the real ``python -m services.generator`` (Celery, solo pool) on the tiny random
pipeline; Redis is the real server on 127.0.0.1:6379 (a database index of its own, flushed per
test) or, for the restart test, a redis-server this suite starts itself. The describer and
scorer are stand-ins (stub_upstreams.py) that answer the real contracts at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.db import Database
from services.common.jobs import JobStore
from services.tooling.stack import free_port
from tests.servers import server_missing

HERE = Path(__file__).resolve().parent
REDIS_DB = 7  # our own database index on the shared server: flushed freely, nobody else's
TERMINAL = {"succeeded", "failed", "canceled"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def redis_or_skip(url: str) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        server_missing(f"Redis at {url} is unreachable: {exc}")


@dataclass
class Topology:
    """One test's processes and stores. ``redis_url`` is the broker and result backend."""

    root: Path
    redis_url: str
    upstream_url: str
    model_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None
    gateway_url: str = ""
    key: str = ""

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.root / 'boig.db'}"

    @property
    def store(self) -> JobStore:
        return JobStore(Database(self.database_url))

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "BOIG_HOME": str(self.root / "home"),
            "BOIG_QUEUE_BROKER_URL": self.redis_url,
            "BOIG_QUEUE_RESULT_BACKEND": self.redis_url,
            "BOIG_QUEUE_TASK_TIME_LIMIT_SECONDS": "8",
            "BOIG_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "10",
            "BOIG_GENERATOR_MODEL_PATH": str(self.model_path),
            "BOIG_GENERATOR_DATABASE_URL": self.database_url,
            "BOIG_GENERATOR_ARTIFACT_ROOT": str(self.root / "artifacts"),
            "BOIG_GENERATOR_DESCRIBER_URL": self.upstream_url,
            "BOIG_GENERATOR_SCORER_URL": self.upstream_url,
            "BOIG_GENERATOR_DEFAULT_STEPS": "4",
            "BOIG_GENERATOR_SWEEP_INTERVAL_SECONDS": "0.5",
            "BOIG_GENERATOR_UNPUBLISHED_GRACE_SECONDS": "2",
            "BOIG_GENERATOR_MAX_RETRIES": "1",
            "BOIG_GENERATOR_RETRY_BACKOFF_SECONDS": "0.2",
            "BOIG_GATEWAY_DATABASE_URL": self.database_url,
            "BOIG_GATEWAY_ARTIFACT_ROOT": str(self.root / "artifacts"),
            "BOIG_GATEWAY_RATE_LIMIT": "10000/minute",
            "BOIG_GATEWAY_MAX_QUEUED_JOBS": "200",
            # Jobs long enough to kill a worker in, and fifty at once from one key.
            "BOIG_GENERATION_MAX_STEPS": "150",
            "BOIG_GENERATION_MAX_QUEUED_PER_OWNER": "200",
            "BOIG_GENERATOR_METRICS_PORT": "0",
            "BOIG_GENERATOR_TORCH_THREADS": "1",
            **self.settings,
        }

    def start_worker(self, name: str = "w1") -> subprocess.Popen[bytes]:
        log = (self.root / f"worker-{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.generator", f"--hostname={name}@%h"],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(process)
        start = self.worker_log(name).count(" ready.")
        wait_for(
            lambda: self.worker_log(name).count(" ready.") > start or process.poll() is not None,
            60,
            f"worker {name} to start",
        )
        assert process.poll() is None, self.worker_log(name)[-3000:]
        return process

    def worker_log(self, name: str = "w1") -> str:
        path = self.root / f"worker-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_gateway(self) -> None:
        port = free_port()
        log = (self.root / "gateway.log").open("ab")
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "services.gateway"],
            env={**self.environment(), "BOIG_GATEWAY_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.gateway_url = f"http://127.0.0.1:{port}"
        wait_for(self._gateway_up, 60, "the gateway to start", every=0.2)
        from services.gateway.auth import KeyStore

        database = Database(self.database_url)
        self.key = KeyStore(database).create("reliability").key
        database.dispose()

    def _gateway_up(self) -> bool:
        assert self.gateway is not None and self.gateway.poll() is None, (
            self.root / "gateway.log"
        ).read_text()
        try:
            return httpx.get(f"{self.gateway_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def submit(self, body: dict[str, Any], **headers: str) -> str:
        response = httpx.post(
            f"{self.gateway_url}/v1/generate",
            json=body,
            headers={**self.headers, **headers},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.gateway_url}/v1/jobs/{job_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (status := self.status(job_id))["state"] in states and status,
            timeout,
            f"job {job_id} to reach {sorted(states)}",
        )

    def kill_workers(self, sig: int = signal.SIGKILL) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(sig)
        for process in self.workers:
            process.wait(timeout=30)
        self.workers.clear()

    def stop(self) -> None:
        for process in [*self.workers, *([self.gateway] if self.gateway else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, *([self.gateway] if self.gateway else [])]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def own_redis_server(root: Path) -> tuple[list[str], int]:
    """A redis-server command line on a free port with no persistence, as CI's is."""
    port = free_port()
    return (
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
        ],
        port,
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def set_upstream_error(
    url: str, error_type: str | None, *, levels: list[str] | None = None
) -> None:
    """Make the stand-ins fail with ``error_type`` (for /describe at ``levels`` only, if given)."""
    body = {"error_type": error_type, "levels": levels}
    httpx.post(f"{url}/_control", json=body).raise_for_status()
