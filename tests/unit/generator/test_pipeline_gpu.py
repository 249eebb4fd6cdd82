"""The pipeline on CUDA in float16, as deployments run it (needs a GPU: marked ``gpu``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.generator.pipeline import ImagePipeline, ImageRequest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def test_auto_picks_cuda_and_float16_and_draws_real_images(cuda: None, tiny_sd_dir: Path) -> None:
    import torch

    gpu = ImagePipeline(tiny_sd_dir)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    request = ImageRequest(
        prompt="a red circle",
        negative_prompt=None,
        width=64,
        height=64,
        steps=4,
        guidance_scale=5.0,
        seed=3,
        count=2,
    )
    steps: list[int] = []
    half = gpu.generate(request, on_step=lambda step, _total: steps.append(step))
    assert steps == [1, 2, 3, 4] and [image.size for image in half] == [(64, 64)] * 2
    # float16 overflow shows up as NaN latents, which decode to a flat black image.
    for image in half:
        assert np.asarray(image).std() > 0
