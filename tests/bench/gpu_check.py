"""GPU check: what one GPU does with Stable Diffusion 1.5 and with BoigSD's DDPO.

An SD-1.5-architecture pipeline is built from its configs (UNet, VAE, CLIP ViT-L/14 text
encoder, DDIM scheduler; OpenAI CLIP's tokenizer from open-clip-torch's BPE) with random
weights, so nothing is downloaded: the compute is SD 1.5's, the images are noise. In fp16 at
512x512 with 30 DDIM steps and guidance 7.5 it measures seconds per image (batch 1), images
per second at batch 8 and the peak GPU memory of each; then one DDPO epoch of the ``gpu``
preset (``DdpoTrainer``, 1 epoch, a brightness reward in process) with its seconds and peak
memory. Without CUDA it exits 2 and says so.

``--dry-run`` needs no GPU: it builds the full-size architecture on torch's meta device
(no memory) to check its parameter counts against SD 1.5's, then the same block layout with
narrow channels on the CPU at 64x64, and runs one denoising step and one DDPO step of a
shrunken gpu preset: every code path of the real check, in seconds.

Run: ``tests/bench/gpu_check.sh [--out result.json]`` or ``tests/bench/gpu_check.sh --dry-run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.common.clip_tokenizer import (
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    clip_bpe_path,
    write_clip_tokenizer,
)
from services.common.contracts import Context
from services.generator.tiny_pipeline import _SCHEDULER_CONFIG as SD_SCHEDULER_CONFIG
from services.trainer.ddpo.config import DdpoConfig, preset
from services.trainer.ddpo.job import PRECISION_DTYPES
from services.trainer.ddpo.rewards import InProcessReward
from services.trainer.ddpo.tasks import Task
from services.trainer.ddpo.train import DdpoTrainer

NO_CUDA_EXIT = 2
RESOLUTION = 512
STEPS = 30
GUIDANCE = 7.5
BATCH = 8

# SD 1.5's unet/config.json, vae/config.json and text_encoder/config.json (CLIP ViT-L/14).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
SD15_TEXT: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "bos_token_id": CLIP_VOCAB_SIZE - 2,
    "eos_token_id": CLIP_VOCAB_SIZE - 1,
    "pad_token_id": CLIP_VOCAB_SIZE - 1,
}
# What diffusers and transformers count for the released SD 1.5 weights.
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
# The dry run's: the same blocks, layers and heads with about a tenth of the channels
# (GroupNorm(32) still divides them; the text encoder keeps 12 heads, of 8), so every code
# path runs as on the full model, in milliseconds.
SMALL_UNET = SD15_UNET | {"block_out_channels": (32, 64, 128, 128), "cross_attention_dim": 96}
SMALL_VAE = SD15_VAE | {"block_out_channels": (32, 32, 64, 64)}
SMALL_TEXT = SD15_TEXT | {"hidden_size": 96, "intermediate_size": 384, "projection_dim": 96}
SMALL_RESOLUTION = 64

PROMPTS = (
    "a red circle at top left, mostly beige background, warm bright tones",
    "summer sale, a yellow sun over a teal sea, bright",
    "a grey product photo on a pastel pink backdrop, soft light",
    "two orange stars on a purple background, bold contrast",
)
TASKS = [
    Task(key=f"t{i}", prompt=prompt, context=Context(account="gpu-check"))
    for i, prompt in enumerate(PROMPTS)
]


@dataclass(frozen=True)
class Architecture:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]


SD15 = Architecture(SD15_UNET, SD15_VAE, SD15_TEXT)
SMALL = Architecture(SMALL_UNET, SMALL_VAE, SMALL_TEXT)


def build_models(architecture: Architecture, device: torch.device) -> dict[str, Any]:
    """Random-weight UNet, VAE and text encoder, created directly on ``device`` (on CUDA no
    3.4 GB of CPU-side float32 first; on ``meta`` no memory at all)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with device:
        torch.manual_seed(0)
        return {
            "unet": UNet2DConditionModel(**architecture.unet),
            "vae": AutoencoderKL(**architecture.vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**architecture.text_encoder)),
        }


def parameter_counts(models: dict[str, Any]) -> dict[str, int]:
    return {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}


def build_pipeline(
    architecture: Architecture, device: torch.device, dtype: torch.dtype, folder: Path
) -> Any:
    """The pipeline as ``services.trainer.ddpo.job.load_pipeline`` returns a real one: frozen
    weights in ``dtype``, no safety checker, progress bars off."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    models = build_models(architecture, device)
    pipe: Any = StableDiffusionPipeline(
        **models,
        tokenizer=write_clip_tokenizer(folder / "tokenizer", clip_bpe_path()),
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    """Peak GPU memory allocated by torch inside the block, in GiB (None on a CPU)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        synchronize(device)
        into["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        into["peak_gib"] = None


def generate(pipe: Any, *, batch: int, steps: int, resolution: int) -> float:
    """Seconds of one pipeline call: ``batch`` images, text encoding to decoded pixels."""
    device = pipe.device
    synchronize(device)
    started = time.perf_counter()
    pipe(
        prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch)],
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        height=resolution,
        width=resolution,
        generator=torch.Generator(device).manual_seed(0),
        output_type="pt",  # decoded tensors: PNG encoding is the CPU's, not measured here
    )
    synchronize(device)
    return time.perf_counter() - started


def measure_generation(
    pipe: Any, *, batch: int, steps: int, resolution: int, repeats: int
) -> dict[str, Any]:
    """Median seconds of ``repeats`` calls after a 2-step warm-up (kernels chosen, caches
    allocated), and the peak memory over the timed calls."""
    generate(pipe, batch=batch, steps=min(2, steps), resolution=resolution)
    result: dict[str, Any] = {}
    with peak_memory(pipe.device, result):
        seconds = statistics.median(
            generate(pipe, batch=batch, steps=steps, resolution=resolution) for _ in range(repeats)
        )
    return result | {
        "seconds_per_call": seconds,
        "seconds_per_image": seconds / batch,
        "images_per_second": batch / seconds,
    }


def brightness(images: torch.Tensor, tasks: Sequence[Task]) -> np.ndarray:
    """A trivial reward (images in [0, 1]): the check times DDPO, not the scorer."""
    return images.mean(dim=(1, 2, 3)).float().cpu().numpy()


def ddpo_epoch(pipe: Any, config: DdpoConfig) -> dict[str, Any]:
    """One epoch of ``DdpoTrainer``: sampling with log-probs, rewards, advantages, PPO update
    of the LoRA. It adds the LoRA to ``pipe``'s UNet, so it runs after the timings."""
    trainer = DdpoTrainer(pipe, config, InProcessReward(brightness))
    result: dict[str, Any] = {}
    with peak_memory(pipe.device, result):
        stats = trainer.run_epoch(TASKS)
    return result | {
        "seconds": stats.seconds,
        "images": stats.images,
        "optimizer_steps": stats.optimizer_steps,
        "trained_unet_passes": (
            stats.images // config.train_batch_size * config.inner_epochs * config.trained_steps
        ),
        "loss": stats.loss,
        "reward_mean": stats.reward_mean,
    }


def dry_run_ddpo_config() -> DdpoConfig:
    """The gpu preset, shrunk to one tiny batch and two steps at 64 px in float32."""
    return preset(
        "gpu",
        resolution=SMALL_RESOLUTION,
        sample_steps=2,
        sample_batch_size=2,
        sample_batches=1,
        images_per_prompt=1,
        train_batch_size=2,
        gradient_accumulation_steps=1,
        mixed_precision="no",
        epochs=1,
        eval_every=0,
        patience=0,
    )


def versions() -> dict[str, str]:
    found = {name: importlib.metadata.version(name) for name in ("diffusers", "transformers")}
    return found | {"torch": torch.__version__, "cuda": str(torch.version.cuda)}


def run_check(*, repeats: int) -> dict[str, Any]:
    device = torch.device("cuda")
    config = preset("gpu", epochs=1, eval_every=0, patience=0)
    dtype = PRECISION_DTYPES[config.mixed_precision]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        pipe = build_pipeline(SD15, device, dtype, Path(folder))
        built = time.perf_counter() - started
        one = measure_generation(pipe, batch=1, steps=STEPS, resolution=RESOLUTION, repeats=repeats)
        many = measure_generation(
            pipe, batch=BATCH, steps=STEPS, resolution=RESOLUTION, repeats=max(1, repeats - 1)
        )
        ddpo = ddpo_epoch(pipe, config)
    return {
        "device": torch.cuda.get_device_name(device),
        "versions": versions(),
        "build_seconds": built,
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": RESOLUTION,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "parameters": parameter_counts(
            {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
        ),
        "batch_1": one,
        f"batch_{BATCH}": many,
        "ddpo_epoch": ddpo
        | {
            "preset": "gpu",
            "resolution": config.resolution,
            "sample_steps": config.sample_steps,
            "mixed_precision": config.mixed_precision,
        },
    }


def run_dry() -> dict[str, Any]:
    counts = parameter_counts(build_models(SD15, torch.device("meta")))
    if counts != SD15_PARAMETERS:
        raise SystemExit(f"the SD 1.5 configs give {counts}, not SD 1.5's {SD15_PARAMETERS}")
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        pipe = build_pipeline(SMALL, device, torch.float32, Path(folder))
        step = measure_generation(pipe, batch=2, steps=1, resolution=SMALL_RESOLUTION, repeats=1)
        ddpo = ddpo_epoch(pipe, dry_run_ddpo_config())
    return {
        "dry_run": True,
        "versions": versions(),
        "sd15_parameters": counts,
        "small_parameters": parameter_counts(
            {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
        ),
        "denoising_step": step,
        "ddpo_step": ddpo,
    }


def report(result: dict[str, Any]) -> str:
    if result.get("dry_run"):
        ddpo = result["ddpo_step"]
        return "\n".join(
            [
                "gpu_check --dry-run (CPU; no timing worth recording)",
                f"  SD 1.5 configs on the meta device: {result['sd15_parameters']} (as SD 1.5)",
                f"  small build (same blocks, narrow channels): {result['small_parameters']}",
                f"  1 denoising step, batch 2 at {SMALL_RESOLUTION} px: "
                f"{result['denoising_step']['seconds_per_call']:.2f} s",
                f"  1 DDPO step (gpu preset shrunk): {ddpo['images']} images, "
                f"{ddpo['optimizer_steps']} optimizer step, loss {ddpo['loss']:.3g}, "
                f"{ddpo['seconds']:.2f} s",
            ]
        )
    one, many, ddpo = result["batch_1"], result[f"batch_{BATCH}"], result["ddpo_epoch"]
    return "\n".join(
        [
            f"gpu_check on {result['device']} ({result['versions']})",
            f"  SD 1.5 architecture, random weights, {result['dtype']}, {RESOLUTION}x{RESOLUTION}"
            f", {STEPS} DDIM steps, guidance {GUIDANCE}",
            f"  batch 1: {one['seconds_per_image']:.2f} s per image, "
            f"peak {one['peak_gib']:.1f} GiB",
            f"  batch {BATCH}: {many['images_per_second']:.2f} images/s "
            f"({many['seconds_per_call']:.1f} s a batch), peak {many['peak_gib']:.1f} GiB",
            f"  DDPO epoch (gpu preset, 1 epoch): {ddpo['images']} images at "
            f"{ddpo['resolution']} px x {ddpo['sample_steps']} steps, "
            f"{ddpo['trained_unet_passes']} trained UNet passes, {ddpo['optimizer_steps']} "
            f"optimizer steps: {ddpo['seconds']:.1f} s, peak {ddpo['peak_gib']:.1f} GiB",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: check the SD 1.5 configs and run every step small on the CPU",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls at batch 1 (3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    # Casting a freshly built model with .to(dtype) warns on every run, about nothing here.
    diffusers_logging.set_verbosity_error()
    if args.dry_run:
        result = run_dry()
    else:
        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA device (torch.cuda.is_available() is False with torch "
                f"{torch.__version__}). Run it on a GPU host, or with --dry-run on a CPU.",
                file=sys.stderr,
            )
            return NO_CUDA_EXIT
        result = run_check(repeats=args.repeats)
    print(report(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
