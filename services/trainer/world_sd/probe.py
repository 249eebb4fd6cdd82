"""A seconds-long probe of whether the world SD is learning what matters: sample a few
held-out captions and measure how far each image's dominant colour is from the colour its
caption asks for. Logged during training next to the loss, which alone says little."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from services.trainer.world_sd.config import WorldSdConfig
from services.trainer.world_sd.data import CaptionedImage
from services.trainer.world_sd.model import WorldSdComponents, assemble_pipeline

PROBE_CAPTIONS = 8
PROBE_STEPS = 10
_QUANT = 32
"""Colour bins of 32 levels per channel: shades of one flat colour fall into one bin."""


def dominant_rgb(image: Image.Image) -> tuple[float, float, float]:
    """Mean colour of the most populated coarse colour bin: the background of a flat creative,
    robust to the shapes and text drawn on it."""
    array = np.asarray(image.convert("RGB"), dtype=np.int64).reshape(-1, 3)
    bins = array // _QUANT
    keys = bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]
    mode = np.bincount(keys).argmax()
    r, g, b = array[keys == mode].mean(axis=0)
    return float(r), float(g), float(b)


class ColourProbe:
    """Dominant-colour distance (sRGB) of samples for fixed held-out captions.

    The target is the featurized description's largest colour: the background the caption
    names first. A model that ignores its prompt scores about the spread of backgrounds in
    the world; one that follows it approaches the autoencoder's own error.
    """

    def __init__(self, images: Sequence[CaptionedImage], config: WorldSdConfig) -> None:
        chosen = [image for image in images if image.description.colors][:PROBE_CAPTIONS]
        self._captions = [image.caption for image in chosen]
        self._targets = np.array(
            [max(image.description.colors, key=lambda c: c.coverage).rgb for image in chosen],
            dtype=float,
        )
        self._config = config

    def measure(self, components: WorldSdComponents) -> dict[str, float]:
        if not self._captions:
            return {}
        pipeline = assemble_pipeline(components, self._config)
        size = self._config.resolution
        generator = torch.Generator().manual_seed(self._config.seed)
        with torch.inference_mode():
            images = pipeline(
                prompt=self._captions,
                num_inference_steps=PROBE_STEPS,
                guidance_scale=self._config.guidance_scale,
                width=size,
                height=size,
                generator=generator,
            ).images
        found = np.array([dominant_rgb(image) for image in images])
        distances = np.linalg.norm(found - self._targets, axis=1)
        return {"background_rgb_distance": round(float(distances.mean()), 2)}
