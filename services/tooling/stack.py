"""Run the BOIG services as local processes on loopback: the compose topology without Docker.

Used by `make demo`, the end-to-end tests and the benchmarks. Each service is the same
`python -m services.<name>` a container runs, wired together through its settings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from services.common.processes import wait_or_kill

START_ORDER = ("featurizer", "describer", "scorer", "generator", "gateway")
WORKERS = frozenset({"generator"})
"""Celery workers: no /health, ready when their Prometheus /metrics answers."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different loopback ports that were free a moment ago. The sockets stay bound
    until all are picked: one at a time, the kernel may hand out the same port twice, and two
    services of one stack then share it (the second cannot bind, the first answers for both)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@dataclass
class LocalStack:
    """Ports, URLs and logs of a running local stack."""

    run_dir: Path
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def log(self, service: str) -> str:
        return (self.run_dir / f"{service}.log").read_text(errors="replace")

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.run_dir / 'gateway.db'}"

    def environment(self) -> dict[str, str]:
        """The settings that wire the services to each other (what compose sets)."""
        env = {f"BOIG_{name.upper()}_PORT": str(port) for name, port in self.ports.items()}
        env |= {
            "BOIG_SCORER_FEATURIZER_URL": self.url("featurizer"),
            "BOIG_SCORER_DESCRIBER_URL": self.url("describer"),
            "BOIG_GATEWAY_SCORER_URL": self.url("scorer"),
            "BOIG_GATEWAY_DESCRIBER_URL": self.url("describer"),
            "BOIG_GATEWAY_DATABASE_URL": self.database_url,
            "BOIG_GATEWAY_ARTIFACT_ROOT": str(self.run_dir / "artifacts"),
            "BOIG_GENERATOR_METRICS_PORT": str(self.ports["generator"]),
            "BOIG_GENERATOR_DESCRIBER_URL": self.url("describer"),
            "BOIG_GENERATOR_SCORER_URL": self.url("scorer"),
            "BOIG_GENERATOR_DATABASE_URL": self.database_url,
            "BOIG_GENERATOR_ARTIFACT_ROOT": str(self.run_dir / "artifacts"),
            # The embedded queue: a SQLite file, no server.
            "BOIG_QUEUE_BROKER_URL": f"sqla+sqlite:///{self.run_dir / 'broker.db'}",
            "BOIG_QUEUE_RESULT_BACKEND": f"db+sqlite:///{self.run_dir / 'results.db'}",
        }
        env.pop("BOIG_GENERATOR_PORT")
        return env


@contextmanager
def local_stack(
    run_dir: Path,
    *,
    services: tuple[str, ...] = START_ORDER,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 180.0,
) -> Iterator[LocalStack]:
    """Start ``services`` (in dependency order), wait until each is healthy, stop them all after."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(
        run_dir=run_dir, ports=dict(zip(START_ORDER, free_ports(len(START_ORDER)), strict=True))
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "PYTHONUNBUFFERED": "1",
        **stack.environment(),
        **(extra_env or {}),
    }
    restore = _terminate_as_exit()
    try:
        for name in START_ORDER:
            if name not in services:
                continue
            log = (run_dir / f"{name}.log").open("wb")
            stack.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for name in stack.processes:
            _wait_healthy(stack, name, ready_timeout)
        yield stack
    finally:
        # A second SIGTERM must not cut the cleanup short (it is bounded: 15 s, then a kill).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for process in stack.processes.values():
            process.terminate()
        for process in stack.processes.values():
            wait_or_kill(process, 15)
        restore()


def _terminate_as_exit() -> Callable[[], None]:
    """Turn SIGTERM into SystemExit while the stack runs, so that ``finally`` stops the
    services: they run in sessions of their own (a Ctrl-C in the terminal does not reach
    them), and Python's default SIGTERM ends the process without unwinding, which left them
    running after ``kill``. Returns what puts the previous handler back. Only the main thread
    may set handlers; elsewhere (a test's worker thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    # None: a handler installed from C, which Python cannot put back; the default stands in.
    previous = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL

    def exit_on_terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_terminate)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


class StackFailed(RuntimeError):
    pass


def _answers_as(name: str, answer: httpx.Response) -> bool:
    """Whether a healthy answer on ``name``'s port comes from ``name``: a service's /health
    names it; a worker's /metrics carries the series it labels with its own name (its model
    load, recorded before the metrics server starts)."""
    if name in WORKERS:
        return f'service="{name}"' in answer.text
    try:
        return bool(answer.json().get("service") == name)
    except ValueError:
        return False


def _wait_healthy(stack: LocalStack, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    process = stack.processes[name]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackFailed(
                f"{name} exited with {process.returncode}:\n{stack.log(name)[-3000:]}"
            )
        try:
            answer = httpx.get(
                f"{stack.url(name)}{'/metrics' if name in WORKERS else '/health'}", timeout=2
            )
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code == 200:
            if not _answers_as(name, answer):
                raise StackFailed(f"{stack.url(name)} answers, but not as {name}")
            return
        time.sleep(0.25)
    raise StackFailed(f"{name} not healthy after {timeout:.0f} s:\n{stack.log(name)[-3000:]}")
