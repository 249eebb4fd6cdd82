"""Evaluate a text-to-image model on held-out captions of the synthetic world, side by side with
its floor (a random pipeline of the same layout), its ceilings (the real creative, and the real
creative after the model's own autoencoder) and a chance line (the real creative of another
caption: a model that draws real creatives but ignores its prompt).

Every image is described by the featurizer, the same measurement the rewards use; each metric
is averaged per caption first, then bootstrapped over captions (95% percentile intervals).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image

from services.common.contracts import Verbalization
from services.trainer.evaluate.bootstrap import bootstrap_mean
from services.trainer.evaluate.results import Estimate
from services.trainer.world_sd.data import CaptionedImage, load_image, pixels, to_images
from services.trainer.world_sd.metrics import (
    FidMeter,
    mean_pairwise_distance,
    palette_rgb_distance,
    prompted_shape_recall,
    tone_agreement,
)

Featurize = Callable[[list[Image.Image]], Awaitable[list[Verbalization]]]
"""Images -> the featurizer's descriptions, in order."""

TRAINED = "world SD"
FLOOR = "random pipeline (floor)"
ROUND_TRIP = "real, autoencoder round trip (ceiling)"
REAL = "real creative (ceiling)"
CHANCE = "real creative of another caption (chance)"

METRICS = ("colour distance", "tone agreement", "shape recall", "diversity", "FID")
LOWER_IS_BETTER = frozenset({"colour distance", "FID"})


@dataclass(frozen=True)
class Sampling:
    samples_per_caption: int = 4
    steps: int = 25
    guidance_scale: float = 2.0
    seed: int = 0
    batch_size: int = 32


@dataclass
class MethodImages:
    """Images per caption (same order as the captions) for one column of the table."""

    name: str
    images: list[list[Image.Image]]
    descriptions: list[list[Verbalization]] = field(default_factory=list)


@dataclass(frozen=True)
class WorldSdEvaluation:
    captions: list[CaptionedImage]
    table: dict[str, dict[str, Estimate | None]]
    """Method -> metric -> estimate (None where the metric does not apply to the method)."""
    fid_images: int
    """Images per column in every FID (the first sample of each caption): FID depends on
    the count, so compare only equal counts. It has no interval (one number per set)."""
    methods: list[MethodImages]
    meta: dict[str, str]


def load_sampler(folder: Path, device: str = "cpu") -> Any:
    pipeline = StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        str(folder),
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def sample_captions(
    pipeline: Any,
    captions: Sequence[str],
    sampling: Sampling,
    size: int,
    *,
    seeds: Sequence[Sequence[int]] | None = None,
) -> list[list[Image.Image]]:
    """``samples_per_caption`` images per caption; image j of caption i is drawn from seed
    ``seeds[i][j]`` (default ``seed + j``) whatever the batching, so two models see the same
    starting noise."""
    if seeds is None:
        seeds = [[sampling.seed + j for j in range(sampling.samples_per_caption)]] * len(captions)
    if len(seeds) != len(captions) or any(len(row) < sampling.samples_per_caption for row in seeds):
        raise ValueError("need samples_per_caption seeds for every caption")
    jobs = [(i, j) for i in range(len(captions)) for j in range(sampling.samples_per_caption)]
    out: list[list[Image.Image]] = [[] for _ in captions]
    for start in range(0, len(jobs), sampling.batch_size):
        chunk = jobs[start : start + sampling.batch_size]
        generators = [torch.Generator().manual_seed(seeds[i][j]) for i, j in chunk]
        with torch.inference_mode():
            images = pipeline(
                prompt=[captions[i] for i, _ in chunk],
                num_inference_steps=sampling.steps,
                guidance_scale=sampling.guidance_scale,
                width=size,
                height=size,
                generator=generators,
            ).images
        for (i, _), image in zip(chunk, images, strict=True):
            out[i].append(image)
    return out


def autoencoder_round_trip(vae_folder: Path, images: Sequence[Image.Image]) -> list[Image.Image]:
    """Each image encoded and decoded (posterior mean) by the model's autoencoder: the best a
    latent diffusion model with this autoencoder could draw."""
    vae = AutoencoderKL.from_pretrained(  # type: ignore[no-untyped-call]
        str(vae_folder), local_files_only=True
    ).eval()
    out: list[Image.Image] = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            batch = pixels(images[start : start + 64])
            latents = vae.encode(batch).latent_dist.mean
            out.extend(to_images(vae.decode(latents).sample))
    return out


async def evaluate_world_sd(
    captions: Sequence[CaptionedImage],
    *,
    trained: Path,
    floor: Path,
    reference: Sequence[CaptionedImage],
    featurize: Featurize,
    fid: FidMeter,
    sampling: Sampling,
    resolution: int,
    progress: Callable[[str], None] = lambda _: None,
) -> WorldSdEvaluation:
    """Score the pipeline folder ``trained`` and the columns described in the module docstring
    on ``captions``; FID of every column is against the real creatives of ``reference``
    (held-out posts other than the captions' own, so the real column is not compared with
    itself)."""
    if len(captions) < 2:
        raise ValueError("need at least two captions")
    captions = list(captions)
    prompts = [image.caption for image in captions]
    real = [load_image(image.media, resolution) for image in captions]

    progress(f"sampling {TRAINED}")
    trained_pipeline = load_sampler(trained)
    methods = [
        MethodImages(TRAINED, sample_captions(trained_pipeline, prompts, sampling, resolution))
    ]
    progress(f"sampling {FLOOR}")
    methods.append(
        MethodImages(FLOOR, sample_captions(load_sampler(floor), prompts, sampling, resolution))
    )
    round_trip = autoencoder_round_trip(trained / "vae", real)
    methods.append(MethodImages(ROUND_TRIP, [[image] for image in round_trip]))
    methods.append(MethodImages(REAL, [[image] for image in real]))
    # Caption i's chance image is caption i+1's creative: real pixels, the wrong prompt.
    methods.append(MethodImages(CHANCE, [[real[(i + 1) % len(real)]] for i in range(len(real))]))

    progress("featurizing")
    for method in methods:
        flat = [image for group in method.images for image in group]
        found = await featurize(flat)
        cursor = 0
        for group in method.images:
            method.descriptions.append(found[cursor : cursor + len(group)])
            cursor += len(group)

    progress("FID")
    reference_images = [load_image(image.media, resolution) for image in reference]
    reference_stats = fid.statistics(reference_images)
    # One image per caption in every column, so each FID rests on the same number of images.
    fid_images = len(captions)
    table: dict[str, dict[str, Estimate | None]] = {}
    for method in methods:
        table[method.name] = _faithfulness(captions, method)
        first = [group[0] for group in method.images]
        value = fid.distance(reference_stats, first)
        table[method.name]["FID"] = Estimate(value, value, value, len(first))
    meta = {
        "captions": str(len(captions)),
        "samples per caption": str(sampling.samples_per_caption),
        "sampling": f"DDIM {sampling.steps} steps, guidance {sampling.guidance_scale}",
        "FID reference": f"{len(reference_images)} other held-out creatives",
    }
    return WorldSdEvaluation(captions, table, fid_images, methods, meta)


def _faithfulness(
    captions: Sequence[CaptionedImage], method: MethodImages
) -> dict[str, Estimate | None]:
    per_caption: dict[str, list[float | None]] = {name: [] for name in METRICS[:4]}
    for caption, descriptions, images in zip(
        captions, method.descriptions, method.images, strict=True
    ):
        asked = caption.description
        per_caption["colour distance"].append(
            _mean([palette_rgb_distance(found, asked) for found in descriptions])
        )
        per_caption["tone agreement"].append(
            _mean([tone_agreement(found, asked) for found in descriptions])
        )
        per_caption["shape recall"].append(
            _mean([prompted_shape_recall(asked, found) for found in descriptions])
        )
        per_caption["diversity"].append(mean_pairwise_distance(images))
    return {name: bootstrap_mean(values) for name, values in per_caption.items()}


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [value for value in values if value is not None]
    return float(np.mean(kept)) if kept else None
