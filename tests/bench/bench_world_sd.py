"""World SD benchmarks: serving throughput and training throughput against in-run floors.

1. Serving, at the model's own size, steps and guidance, batch 4: images per second through
   the worker's ``ImagePipeline.generate`` (with its per-step control: a cancel check in the
   SQL store, progress to the result backend) against the bare diffusers call (goal: at most
   10% slower), and against the UNet's forward passes alone (the floor: what denoising costs
   with no text encoder, scheduler or autoencoder around it).
2. Training, the cpu preset's UNet stage (text encoder + UNet, batch as in the preset) for a
   few steps: images per second against a bare forward + backward + AdamW step of the same
   UNet on the same batch (the floor).

Run: ``make bench`` (or ``python tests/bench/bench_world_sd.py``); needs ``make models``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import overhead

from services.common.contracts import Context, Verbalization
from services.common.model_folders import read_sampling_defaults
from services.common.settings import default_world_sd_dir
from services.generator.pipeline import ImagePipeline
from services.trainer.world_sd.config import cpu_preset
from services.trainer.world_sd.data import CaptionedImage
from services.trainer.world_sd.train import train_world_sd

REPEATS = 5
TRAIN_STEPS = 8
BATCH = 4
STEPS = 25


def unet_floor(model: Path, guidance_scale: float) -> float:
    """Seconds per image of the UNet's 25 forward passes alone (doubled batch under
    classifier-free guidance, as the pipeline runs it)."""
    pipeline = ImagePipeline(model)
    unet = pipeline.pipe.unet
    rows = BATCH * (2 if guidance_scale > 1 else 1)
    size = unet.config.sample_size
    latents = torch.randn(rows, unet.config.in_channels, size, size)
    hidden = torch.randn(rows, 77, unet.config.cross_attention_dim)
    times = []
    with torch.inference_mode():
        for _ in range(REPEATS):
            started = time.perf_counter()
            for step in range(STEPS):
                unet(latents, torch.full((rows,), 999 - 40 * step), hidden)
            times.append(time.perf_counter() - started)
    return statistics.median(times) / BATCH


def flat_creatives(folder: Path, count: int) -> list[CaptionedImage]:
    """Flat-colour stand-ins: the training step's cost does not depend on what is drawn."""
    folder.mkdir(parents=True)
    creatives = []
    for index in range(count):
        path = folder / f"{index}.png"
        Image.new("RGB", (64, 64), (index * 4, 255 - index * 4, 128)).save(path)
        creatives.append(
            CaptionedImage(
                id=str(index),
                media=path,
                context=Context(account="bench"),
                level="high",
                description=Verbalization(),
                caption=f"a square at top left, mostly colour {index} background, warm tones",
            )
        )
    return creatives


def training(work: Path) -> tuple[float, float]:
    """(images/s of the preset's UNet stage, images/s of a bare UNet forward+backward+step)."""
    config = cpu_preset().model_copy(
        update={"vae_steps": 0, "unet_steps": TRAIN_STEPS, "warmup_steps": 1, "sample_every": 0}
    )
    creatives = flat_creatives(work / "media", count=64)
    result = train_world_sd(creatives, work / "run", config)
    ours = TRAIN_STEPS * config.batch_size / result.seconds["unet"]

    from services.trainer.world_sd.model import build_unet

    unet = build_unet(config).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    size = config.latent_size
    latents = torch.randn(config.batch_size, config.latent_channels, size, size)
    hidden = torch.randn(config.batch_size, 77, config.text_hidden_size)
    timesteps = torch.randint(0, 1000, (config.batch_size,))
    started = time.perf_counter()
    for _ in range(TRAIN_STEPS):
        loss = unet(latents, timesteps, hidden).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    bare = TRAIN_STEPS * config.batch_size / (time.perf_counter() - started)
    return ours, bare


def main() -> None:
    model = default_world_sd_dir()
    if not (model / "model_index.json").is_file():
        raise SystemExit(f"no world SD at {model}: run `make models` first")
    guidance = read_sampling_defaults(model).guidance_scale or 7.5
    size = ImagePipeline(model).native_size[0]
    with tempfile.TemporaryDirectory(prefix="boig-bench-") as tmp:
        bare_s, ours_s, ratio = overhead(model, Path(tmp), guidance_scale=guidance, size=size)
        floor_s = unet_floor(model, guidance)
        train_ours, train_bare = training(Path(tmp))
    print(f"world SD serving, {size}x{size}, {STEPS} steps, guidance {guidance}, batch {BATCH}:")
    print(f"  UNet forward passes alone (floor): {1 / floor_s:6.1f} images/s")
    print(f"  bare diffusers pipe(...):          {1 / bare_s:6.1f} images/s")
    print(f"  worker's generate + control:       {1 / ours_s:6.1f} images/s")
    print(f"  worker / bare time ratio: {ratio:.3f}   goal: <= 1.10")
    print(f"  bare / UNet-floor time ratio: {bare_s / floor_s:.3f}")
    print(f"world SD training (cpu preset UNet stage, {TRAIN_STEPS} steps):")
    print(f"  bare UNet forward+backward+AdamW (floor): {train_bare:6.1f} images/s")
    print(f"  training step (text encoder + UNet):      {train_ours:6.1f} images/s")
    print(f"  floor / ours ratio: {train_bare / train_ours:.3f}")


if __name__ == "__main__":
    main()
