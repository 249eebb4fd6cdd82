"""Stopping child processes: SIGTERM, a bounded wait, then SIGKILL."""

from __future__ import annotations

import subprocess
from typing import Any


def wait_or_kill(process: subprocess.Popen[Any], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``process`` (already asked to stop), then kill it."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_process(process: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM ``process`` if it still runs and give it ``grace`` seconds to exit, then kill
    it. Signalled once only: a second SIGTERM makes some servers (uvicorn) exit at once."""
    if process.poll() is None:
        process.terminate()
        wait_or_kill(process, grace)
