"""The DDPO tests run on the tiny SD pipeline with one torch thread, as the generator's do."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every DDPO test module runs with one torch thread (see ``one_torch_thread``)."""
