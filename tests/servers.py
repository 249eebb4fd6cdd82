"""The real servers the tests talk to, and what a test does when one is missing."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"


def server_missing(reason: str) -> NoReturn:
    """Skip a test whose server is missing on a developer's machine; fail it in CI
    (``CI=true``), where a green run must mean that the test ran."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(reason)


def promtool() -> str:
    """Prometheus' promtool (Debian's `prometheus` package): checks rules and PromQL."""
    path = shutil.which("promtool")
    if path is None:
        server_missing("promtool is not installed (apt-get install prometheus provides it)")
    return path
