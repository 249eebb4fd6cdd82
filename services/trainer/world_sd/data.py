"""The world SD's training data: each creative of an ingested dataset with the prompt the
generator would write for its featurized description (so serving prompts, written from
BoigLLM's descriptions, are in-distribution), and its pixels at the training resolution."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.common.contracts import Context, KpiLevel, Verbalization
from services.common.image_prompts import TokenCounter, render_prompt
from services.common.verbalization import parse
from services.trainer.finetune.data import load_examples
from services.trainer.ingest.dataset import Direction


@dataclass(frozen=True)
class CaptionedImage:
    """A creative, its featurized description and the prompt rendered from it."""

    id: str
    media: Path
    context: Context
    level: KpiLevel
    description: Verbalization
    caption: str


def captioned_images(
    dataset_dir: Path,
    media: dict[str, Path],
    split: str,
    *,
    count_tokens: TokenCounter,
) -> list[CaptionedImage]:
    """One entry per content example of ``split`` ("train" or "test") whose image is known.

    ``media`` maps post ids to image files (the dataset keeps structured fields only).
    ``count_tokens`` is the text encoder tokenizer's, so captions fit its 75 tokens exactly
    as the generator's prompts do.
    """
    images = []
    for example in load_examples(dataset_dir, split)[Direction.CONTENT]:
        path = media.get(example.id)
        if path is None:
            continue
        description = parse(example.verbalization)
        images.append(
            CaptionedImage(
                id=example.id,
                media=path,
                context=example.context,
                level=example.level,
                description=description,
                caption=render_prompt(description, example.context, count_tokens=count_tokens),
            )
        )
    return images


def token_counter(tokenizer: object) -> Callable[[str], int]:
    """Tokens of a text in a (CLIP) tokenizer, without its start and end tokens."""
    tokenize = tokenizer.tokenize  # type: ignore[attr-defined]

    def count(text: str) -> int:
        return len(tokenize(text))

    return count


def load_image(path: Path, resolution: int) -> Image.Image:
    """An RGB image at ``resolution`` square: a box filter, which for the world's 256 px
    creatives is the exact mean of each 4x4 block (no ringing around flat colours)."""
    with Image.open(path) as image:
        return image.convert("RGB").resize((resolution, resolution), Image.Resampling.BOX)


def pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """(n, 3, h, w) float32 in [-1, 1], the range the autoencoder works in."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """(n, 3, h, w) in [-1, 1] -> PIL images (rounded, clipped)."""
    array = ((batch.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(item.permute(1, 2, 0).cpu().numpy()) for item in array]
