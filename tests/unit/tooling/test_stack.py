"""A local stack stops its services when its process is terminated, not only on return."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import services

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
