"""BoigSD LoRAs: what the trainer saves and publishes is exactly what the generator serves,
and taking it off gives back the base pipeline bit for bit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from services.common.boigsd_lora import (
    LORA_CONFIG_FILE,
    LORA_TARGETS,
    LORA_WEIGHTS_FILE,
    add_boigsd_lora,
    read_boigsd_lora_config,
    save_boigsd_lora,
)
from services.common.checkpoints import (
    KIND_BOIGSD_LORA,
    BaseModelRef,
    CheckpointRef,
    DatasetRef,
    current_checkpoint,
    load_manifest,
    publish_checkpoint,
)
from services.generator.pipeline import ImagePipeline, ImageRequest

REQUEST = ImageRequest(
    prompt="a red circle on a white background",
    negative_prompt="dark",
    width=64,
    height=64,
    steps=3,
    guidance_scale=5.0,
    seed=5,
    count=2,
)
NAME = "boigsd"

# The tiny models' ops take microseconds: one torch thread (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class TrainedLora:
    folder: Path
    pixels: NDArray[np.int16]
    """What the trainer's own pipeline drew with the LoRA on."""


def assert_same_drawing(actual: NDArray[np.int16], expected: NDArray[np.int16]) -> None:
    """Equal up to float rounding: a different thread count or kernel may move a pixel by 1,
    while a wrong LoRA scale or a missing layer moves many by tens."""
    assert np.abs(actual - expected).max() <= 1


def pixels(pipeline: ImagePipeline) -> NDArray[np.int16]:
    images = pipeline.generate(REQUEST)
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def train(
    tiny_sd_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    rank: int,
    alpha: int,
    targets: str = "attention",
) -> TrainedLora:
    """Stand-in for the DDPO trainer: a LoRA whose B matrices are random (nonzero)."""
    import torch

    trainer = ImagePipeline(tiny_sd_dir)
    base = pixels(trainer)
    parameters = add_boigsd_lora(
        trainer.pipe.unet, rank=rank, alpha=alpha, target_modules=LORA_TARGETS[targets]
    )
    assert parameters and all(p.requires_grad for p in parameters)
    names = [name for name, p in trainer.pipe.unet.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    # B starts at zero, so a fresh LoRA changes nothing
    np.testing.assert_array_equal(pixels(trainer), base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in trainer.pipe.unet.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    drawn = pixels(trainer)
    return TrainedLora(save_boigsd_lora(trainer.pipe, out_dir, base_model="tiny-sd"), drawn)


def publish(registry: Path, lora: TrainedLora) -> CheckpointRef:
    publish_checkpoint(
        registry,
        NAME,
        lora.folder,
        kind=KIND_BOIGSD_LORA,
        base_model=BaseModelRef(name="tiny-sd", version="test"),
        data=DatasetRef(manifest_sha256="0" * 64, version="test"),
        hyperparameters={"rank": 4},
    )
    ref = current_checkpoint(registry, NAME)
    assert ref is not None
    assert load_manifest(ref, verify=True).kind == KIND_BOIGSD_LORA
    return ref


@pytest.fixture(scope="module")
def first(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedLora:
    # alpha != rank: the scale must survive saving and loading
    return train(tiny_sd_dir, tmp_path_factory.mktemp("lora") / "a", seed=1, rank=4, alpha=8)


@pytest.fixture(scope="module")
def second(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedLora:
    return train(tiny_sd_dir, tmp_path_factory.mktemp("lora") / "b", seed=2, rank=2, alpha=2)


@pytest.fixture(scope="module")
def pipeline(tiny_sd_dir: Path) -> ImagePipeline:
    return ImagePipeline(tiny_sd_dir)


@pytest.fixture
def base(pipeline: ImagePipeline) -> NDArray[np.int16]:
    pipeline.unload_lora()
    return pixels(pipeline)


def test_saved_lora_is_safetensors_and_json_only(first: TrainedLora) -> None:
    assert sorted(path.name for path in first.folder.iterdir()) == [
        LORA_CONFIG_FILE,
        LORA_WEIGHTS_FILE,
    ]
    config = json.loads((first.folder / LORA_CONFIG_FILE).read_text())
    assert config == {
        "alpha": 8,
        "base_model": "tiny-sd",
        "format_version": 1,
        "rank": 4,
        "target_modules": ["to_k", "to_out.0", "to_q", "to_v"],
    }
    loaded = read_boigsd_lora_config(first.folder)
    assert loaded is not None and (loaded.rank, loaded.alpha) == (4, 8)


def test_saved_in_diffusers_sd_lora_layout(first: TrainedLora) -> None:
    from safetensors import safe_open

    with safe_open(str(first.folder / LORA_WEIGHTS_FILE), "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(key.startswith("unet.") for key in keys)
    assert any(key.endswith("attn1.to_q.lora_A.weight") for key in keys)


def test_published_lora_serves_what_the_trainer_drew(
    pipeline: ImagePipeline, base: NDArray[np.int16], first: TrainedLora, tmp_path: Path
) -> None:
    ref = publish(tmp_path / "registry", first)
    pipeline.load_lora(ref.path, ref.version)
    assert pipeline.lora_version == ref.version
    served = pixels(pipeline)
    assert np.abs(served - base).max() > 20
    assert_same_drawing(served, first.pixels)


def test_a_lora_on_convolutions_too_serves_what_the_trainer_drew(
    pipeline: ImagePipeline, base: NDArray[np.int16], tiny_sd_dir: Path, tmp_path: Path
) -> None:
    every = train(tiny_sd_dir, tmp_path / "all", seed=3, rank=2, alpha=4, targets="all")
    config = read_boigsd_lora_config(every.folder)
    assert config is not None and "conv1" in config.target_modules
    pipeline.load_lora(every.folder, "all")
    served = pixels(pipeline)
    assert np.abs(served - base).max() > 20
    assert_same_drawing(served, every.pixels)
    pipeline.unload_lora()


def test_unload_restores_the_base_bit_for_bit(
    pipeline: ImagePipeline, base: NDArray[np.int16], first: TrainedLora
) -> None:
    pipeline.load_lora(first.folder, "v1")
    pipeline.unload_lora()
    assert pipeline.lora_version is None
    np.testing.assert_array_equal(pixels(pipeline), base)
    pipeline.unload_lora()  # unloading twice is harmless
    np.testing.assert_array_equal(pixels(pipeline), base)


def test_a_second_lora_replaces_the_first(
    pipeline: ImagePipeline,
    base: NDArray[np.int16],
    first: TrainedLora,
    second: TrainedLora,
    tiny_sd_dir: Path,
) -> None:
    pipeline.load_lora(first.folder, "v1")
    pipeline.load_lora(second.folder, "v2")
    assert pipeline.lora_version == "v2"
    replaced = pixels(pipeline)
    assert_same_drawing(replaced, second.pixels)
    fresh = ImagePipeline(tiny_sd_dir)
    fresh.load_lora(second.folder, "v2")
    np.testing.assert_array_equal(pixels(fresh), replaced)
    pipeline.unload_lora()
    np.testing.assert_array_equal(pixels(pipeline), base)


def test_a_lora_that_fails_to_load_leaves_the_previous_one_serving(
    pipeline: ImagePipeline, base: NDArray[np.int16], first: TrainedLora, tmp_path: Path
) -> None:
    pipeline.load_lora(first.folder, "v1")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / LORA_WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_lora_weights.bin").write_bytes(b"\x80\x04pickle")

    with pytest.raises(Exception, match=r"(?i)header|safetensor|deserializ"):
        pipeline.load_lora(corrupt, "v2")
    with pytest.raises(FileNotFoundError, match=LORA_WEIGHTS_FILE):
        pipeline.load_lora(pickled, "v3")  # a .bin is never unpickled
    assert pipeline.lora_version == "v1"
    assert_same_drawing(pixels(pipeline), first.pixels)
    pipeline.unload_lora()
    np.testing.assert_array_equal(pixels(pipeline), base)
