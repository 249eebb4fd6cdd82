"""A test whose server is missing skips on a developer's machine and fails in CI."""

from __future__ import annotations

import pytest

from tests.servers import server_missing


def test_a_missing_server_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Redis at x is unreachable"):
        server_missing("Redis at x is unreachable")


def test_a_missing_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="a missing server is a failure"):
        server_missing("PostgreSQL at y is unreachable")
