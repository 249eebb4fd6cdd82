"""ImagePipeline on the tiny random SD pipeline: sizes, seeds, steps and cancellation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from services.generator.pipeline import ImagePipeline, ImageRequest

REQUEST = ImageRequest(
    prompt="a red circle on a white background",
    negative_prompt=None,
    width=64,
    height=64,
    steps=3,
    guidance_scale=7.5,
    seed=11,
    count=2,
)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def pipeline(tiny_sd_dir: Path) -> ImagePipeline:
    return ImagePipeline(tiny_sd_dir)


def pixels(images: list[Image.Image]) -> NDArray[np.int16]:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_loads_on_the_cpu_in_float32_without_a_lora(pipeline: ImagePipeline) -> None:
    import torch

    assert pipeline.device == torch.device("cpu")
    assert pipeline.dtype == torch.float32
    assert pipeline.lora_version is None
    assert pipeline.native_size == (64, 64)
    assert len(pipeline.base_version) == 12
    assert pipeline.count_prompt_tokens("a red circle") == 3


def test_generate_returns_count_rgb_images_of_the_size_asked(pipeline: ImagePipeline) -> None:
    images = pipeline.generate(replace(REQUEST, width=96, height=64, count=3))
    assert len(images) == 3
    assert all(image.size == (96, 64) and image.mode == "RGB" for image in images)


def test_same_seed_same_pixels_other_seed_other_pixels(pipeline: ImagePipeline) -> None:
    first = pixels(pipeline.generate(REQUEST))
    again = pixels(pipeline.generate(REQUEST))
    other = pixels(pipeline.generate(replace(REQUEST, seed=REQUEST.seed + 100)))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 20
    assert np.abs(first[0] - first[1]).max() > 20  # each image has its own noise


def test_image_i_depends_on_seed_plus_i_only(pipeline: ImagePipeline) -> None:
    batch = pixels(pipeline.generate(replace(REQUEST, count=3)))
    for index in range(3):
        alone = pixels(pipeline.generate(replace(REQUEST, seed=REQUEST.seed + index, count=1)))
        # batched matmuls may round differently from single ones
        assert np.abs(batch[index] - alone[0]).max() <= 2, index


def test_prompt_and_negative_prompt_steer_the_image(pipeline: ImagePipeline) -> None:
    base = pixels(pipeline.generate(REQUEST))
    other_prompt = pixels(pipeline.generate(replace(REQUEST, prompt="a blue square")))
    negative = pixels(pipeline.generate(replace(REQUEST, negative_prompt="dark, muted")))
    empty_negative = pixels(pipeline.generate(replace(REQUEST, negative_prompt="")))
    assert np.abs(base - other_prompt).max() > 0
    assert np.abs(base - negative).max() > 0
    np.testing.assert_array_equal(base, empty_negative)  # "" means no negative prompt


def test_on_step_reports_every_step_in_order(pipeline: ImagePipeline) -> None:
    calls: list[tuple[int, int]] = []
    pipeline.generate(
        replace(REQUEST, steps=4), on_step=lambda step, total: calls.append((step, total))
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_an_exception_from_on_step_stops_the_run_and_propagates(pipeline: ImagePipeline) -> None:
    calls: list[int] = []

    def cancel_at_two(step: int, _total: int) -> None:
        calls.append(step)
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        pipeline.generate(replace(REQUEST, steps=5), on_step=cancel_at_two)
    assert calls == [1, 2]
    # the canceled run leaves nothing behind: the next run is the same as ever
    np.testing.assert_array_equal(
        pixels(pipeline.generate(REQUEST)), pixels(pipeline.generate(REQUEST))
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 60}, "width must be a positive multiple of 8"),
        ({"height": 0}, "height must be a positive multiple of 8"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"count": 0}, "count must be at least 1"),
        ({"seed": -1}, "seed must be in"),
    ],
)
def test_bad_requests_fail_before_any_work(
    pipeline: ImagePipeline, change: dict[str, Any], message: str
) -> None:
    calls: list[int] = []
    with pytest.raises(ValueError, match=message):
        pipeline.generate(replace(REQUEST, **change), on_step=lambda step, _: calls.append(step))
    assert calls == []


def test_bad_dtype_is_refused(tiny_sd_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        ImagePipeline(tiny_sd_dir, dtype="int8")
