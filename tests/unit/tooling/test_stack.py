"""A local stack stops its services when its process is terminated, not only on return, and
never mistakes another process on a service's port for that service."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import services
from services.tooling import stack
from services.tooling.stack import free_ports

REPO = Path(services.__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from services.tooling.stack import local_stack

    env = {"BOIG_FEATURIZER_DETECTOR_BACKEND": "none"}
    with local_stack(Path(sys.argv[1]), services=("featurizer",), extra_env=env) as stack:
        print(stack.processes["featurizer"].pid, flush=True)
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_services_it_started(tmp_path: Path) -> None:
    # The services run in sessions of their own, so only the stack's own cleanup reaches them.
    owner = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        service = int(owner.stdout.readline())
        assert _alive(service)
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=60) == 128 + signal.SIGTERM
        assert not _alive(service)
    finally:
        owner.kill()
        owner.wait()


def test_the_ports_of_one_stack_differ() -> None:
    # Picked one at a time, the kernel may hand out a released port again: two services of
    # one stack then share it, and the one that binds first answers for both.
    ports = free_ports(64)
    assert len(set(ports)) == 64


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Another service, healthy, on the port a stack gave its featurizer."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "service": "describer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_port_answered_by_another_service_fails_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    taken = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(stack, "free_ports", lambda count: [taken, *free_ports(count - 1)])
    env = {"BOIG_FEATURIZER_DETECTOR_BACKEND": "none"}
    try:
        with (
            pytest.raises(stack.StackFailed, match="not as featurizer"),
            stack.local_stack(tmp_path, services=("featurizer",), extra_env=env),
        ):
            pass
    finally:
        server.shutdown()
        server.server_close()
