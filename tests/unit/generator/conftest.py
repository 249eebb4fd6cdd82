"""Fixtures of the generator tests: one CPU thread for torch while they run (the tiny SD
pipeline they share is built once per session by tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every generator test module runs with one torch thread (see ``one_torch_thread``)."""
