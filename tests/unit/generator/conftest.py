"""Fixtures of the generator tests: the tiny random SD pipeline, built once per session, and
one CPU thread for torch while these tests run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.generator.tiny_pipeline import prepare_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Stable Diffusion pipeline folder (model_index.json, safetensors)."""
    return prepare_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny models' ops take microseconds: a second OpenMP thread only adds sync cost, and
    when another process holds the other core, two spinning threads made a step ~50x slower.

    Module-scoped, so that it also covers the module-scoped pipelines (set up before any
    function-scoped fixture); torch's setting is restored after each module.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
