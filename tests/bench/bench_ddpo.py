"""DDPO benchmark: seconds per epoch of ``DdpoTrainer.run_epoch`` against its floor.

The floor is what an epoch cannot do without, measured bare in the same run with the same
pipeline and config: the same ``sample_trajectories`` calls (batch size, passes, steps, eta,
guidance, resolution), then, for every minibatch of ``train_batch_size`` trajectories and each
of its ``trained_steps`` timesteps, one guided UNet forward (``guided_noise``) and a backward
of the prediction's mean into the LoRA; no log-probability, no PPO loss, no optimizer. The
epoch adds to that the per-step DDIM log-probability, the clipped PPO loss and its
statistics, gradient clipping and AdamW steps, the rewards (here a trivial in-process mean
brightness, so the scorer is not measured) and the advantages. Goal: at most 1.5 times the
floor. With ``kl_coef`` > 0 the epoch also runs the base model's forward per trained step
(a third more compute by design): the presets leave it at 0.

After one warm-up of each, DDPO epochs and floor epochs alternate (``--epochs`` of each), so
that load from elsewhere on the machine falls on both; the figures are medians. Prints the
model folder, the preset, images per epoch, trained steps, seconds per epoch of each (split
into sampling and training), the ratio and whether the goal is met.

Run: ``python tests/bench/bench_ddpo.py`` (the world SD with the cpu preset when ``make
models`` has built it, else the tiny random pipeline with the tiny preset), or e.g.
``python tests/bench/bench_ddpo.py --model ~/.cache/boig/models/tiny-sd --epochs 2``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.common.contracts import Context
from services.common.model_folders import read_sampling_defaults
from services.common.settings import (
    TINY_SD_NAME,
    default_tiny_pipeline_dir,
    default_world_sd_dir,
)
from services.generator.tiny_pipeline import prepare_tiny_pipeline
from services.trainer.ddpo.config import PRESETS, DdpoConfig, preset
from services.trainer.ddpo.job import load_pipeline
from services.trainer.ddpo.rewards import InProcessReward
from services.trainer.ddpo.sampling import guided_noise, sample_trajectories
from services.trainer.ddpo.tasks import Task
from services.trainer.ddpo.train import DdpoTrainer

GOAL = 1.5
PROMPTS = [
    "a red circle at top left, mostly beige background, warm bright tones",
    "a blue square in the centre, mostly white background, cool tones",
    "summer sale, a yellow sun over a teal sea, bright",
    "a green triangle at bottom right, mostly navy background, dark tones",
    "two orange stars on a purple background, bold contrast",
    "a grey product photo on a pastel pink backdrop, soft light",
    "a black headline over a lime background, minimal",
    "a brown bottle beside a white cup, warm muted tones",
]
TASKS = [
    Task(key=f"t{i}", prompt=prompt, context=Context(account=f"bench{i % 2}"))
    for i, prompt in enumerate(PROMPTS)
]


def brightness(images: torch.Tensor, tasks: Sequence[Task]) -> np.ndarray:
    """A trivial reward: the images' mean brightness (the scorer is not measured)."""
    return images.mean(dim=(1, 2, 3)).float().cpu().numpy()


def synchronize(pipe: Any) -> None:
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)


class Split:
    """Seconds spent in sampling and in training during one epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sampling = 0.0
        self.training = 0.0


def time_methods(trainer: DdpoTrainer, split: Split) -> None:
    """Wrap the trainer's ``sample`` and ``train`` (on the instance only) to record their
    seconds in ``split``: what ``run_epoch`` spends in each, the rest being its glue."""

    def timed(name: str, field: str) -> None:
        method: Callable[..., Any] = getattr(trainer, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                synchronize(trainer.pipe)
                setattr(split, field, getattr(split, field) + time.perf_counter() - started)

        setattr(trainer, name, wrapper)

    timed("sample", "sampling")
    timed("train", "training")


def floor_epoch(
    pipe: Any,
    parameters: Sequence[torch.nn.Parameter],
    config: DdpoConfig,
    rng: np.random.Generator,
    split: Split,
) -> None:
    """The bare epoch: the same sampling, then one guided forward + backward per trained
    timestep of every minibatch, with the LoRA trainable (its gradients are dropped)."""
    unet = pipe.unet
    started = time.perf_counter()
    unet.eval()
    drawn = []
    for _ in range(config.sample_batches):
        prompts = config.sample_batch_size // config.images_per_prompt
        picked = [
            TASKS[int(i)].prompt
            for i in rng.integers(0, len(TASKS), prompts)
            for _ in range(config.images_per_prompt)
        ]
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, config.sample_batch_size)]
        drawn.append(
            sample_trajectories(
                pipe,
                picked,
                steps=config.sample_steps,
                eta=config.eta,
                guidance_scale=config.guidance_scale,
                width=config.resolution,
                height=config.resolution,
                seeds=seeds,
            )
        )
    synchronize(pipe)
    sampled = time.perf_counter()
    unet.train()
    latents = torch.cat([d.latents for d in drawn])
    prompt_embeds = torch.cat([d.prompt_embeds for d in drawn])
    negatives = [d.negative_embeds for d in drawn if d.negative_embeds is not None]
    negative_embeds = torch.cat(negatives) if negatives else None
    timesteps = drawn[0].timesteps
    for _ in range(config.inner_epochs):
        order = rng.permutation(len(latents))
        for start in range(0, len(order), config.train_batch_size):
            rows = torch.as_tensor(order[start : start + config.train_batch_size])
            for j in rng.permutation(len(timesteps))[: config.trained_steps]:
                noise = guided_noise(
                    unet,
                    latents[rows, j],
                    timesteps[j],
                    prompt_embeds[rows],
                    None if negative_embeds is None else negative_embeds[rows],
                    config.guidance_scale,
                )
                noise.mean().backward()  # type: ignore[no-untyped-call]
    for parameter in parameters:
        parameter.grad = None
    synchronize(pipe)
    split.sampling += sampled - started
    split.training += time.perf_counter() - sampled


def default_model() -> Path:
    world = default_world_sd_dir()
    if (world / "model_index.json").is_file():
        return world
    return prepare_tiny_pipeline(default_tiny_pipeline_dir())


def is_tiny(model: Path) -> bool:
    return model.name == TINY_SD_NAME or model.resolve() == default_tiny_pipeline_dir().resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a diffusers SD folder (default: the world SD if built, else the tiny pipeline)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="DDPO preset (default: tiny for the tiny pipeline, else cpu)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each (3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="auto", help="auto (cuda if any), cpu, cuda, ...")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model.expanduser() if args.model is not None else default_model()
    if not (model / "model_index.json").is_file():
        raise SystemExit(f"no diffusers pipeline at {model} (no model_index.json)")
    preset_name = args.preset or ("tiny" if is_tiny(model) else "cpu")
    # As the job does (config_for): the guidance the model folder recommends, if any.
    overrides: dict[str, Any] = {"eval_every": 0, "patience": 0}
    guidance = read_sampling_defaults(model).guidance_scale
    if guidance is not None:
        overrides["guidance_scale"] = guidance
    config = preset(preset_name, **overrides)

    pipe = load_pipeline(model, device=args.device)
    trainer = DdpoTrainer(pipe, config, InProcessReward(brightness))
    ddpo_split, floor_split = Split(), Split()
    time_methods(trainer, ddpo_split)
    rng = np.random.default_rng(1)

    def ddpo() -> None:
        trainer.run_epoch(TASKS)
        synchronize(pipe)

    def floor() -> None:
        floor_epoch(pipe, trainer.parameters, config, rng, floor_split)

    ddpo()  # warm-up
    floor()
    ddpo_split.reset()
    floor_split.reset()
    ddpo_times, floor_times = [], []
    for _ in range(args.epochs):
        for fn, times in ((ddpo, ddpo_times), (floor, floor_times)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)

    ddpo_s, floor_s = statistics.median(ddpo_times), statistics.median(floor_times)
    ratio = ddpo_s / floor_s
    images = config.sample_batch_size * config.sample_batches
    minibatches = -(-images // config.train_batch_size) * config.inner_epochs
    n = args.epochs
    print(f"DDPO on {model}")
    print(
        f"  preset {preset_name}: {images} images per epoch "
        f"({config.sample_batches} x {config.sample_batch_size}), {config.resolution} px, "
        f"{config.sample_steps} steps, guidance {config.guidance_scale}, eta {config.eta}"
    )
    print(
        f"  trained steps: {config.trained_steps} per minibatch x {minibatches} minibatches "
        f"of {config.train_batch_size} = {config.trained_steps * minibatches} UNet "
        f"forward+backward per epoch"
    )
    print(f"  device {pipe.device}, {torch.get_num_threads()} threads, medians of {n} epochs")
    for label, seconds, split in (
        ("floor (sampling + forward+backward):", floor_s, floor_split),
        ("DDPO epoch (run_epoch):             ", ddpo_s, ddpo_split),
    ):
        print(
            f"  {label} {seconds:8.3f} s/epoch   (mean sampling {split.sampling / n:.3f} s, "
            f"training {split.training / n:.3f} s)"
        )
    verdict = "met" if ratio <= GOAL else "not met"
    print(f"  DDPO / floor time ratio: {ratio:.3f}   goal ≤ {GOAL}: {verdict}")


if __name__ == "__main__":
    main()
