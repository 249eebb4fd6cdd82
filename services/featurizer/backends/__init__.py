"""Object-detection backends, chosen by name (``BOIG_FEATURIZER_DETECTOR_BACKEND``).

Backend modules import torch/ultralytics; this table imports them only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable

from services.featurizer.backends.base import Detector
from services.featurizer.settings import FeaturizerSettings

__all__ = ["DETECTOR_BACKENDS", "Detector", "load_detector"]


def _load_yolo(settings: FeaturizerSettings) -> Detector:
    from services.featurizer.backends.yolo import YoloDetector

    return YoloDetector.load(
        settings.detector_weights,
        device=settings.device,
        confidence=settings.detector_confidence,
        image_size=settings.detector_image_size,
        max_objects=settings.detector_max_objects,
        cpu_threads=settings.detector_cpu_threads,
        sha256=settings.detector_sha256,
    )


def _no_detector(settings: FeaturizerSettings) -> None:
    return None


DETECTOR_BACKENDS: dict[str, Callable[[FeaturizerSettings], Detector | None]] = {
    "yolo": _load_yolo,
    "none": _no_detector,
}


def load_detector(settings: FeaturizerSettings) -> Detector | None:
    """The detector the settings name, loaded and warmed up; None for backend 'none'."""
    try:
        factory = DETECTOR_BACKENDS[settings.detector_backend]
    except KeyError:
        known = ", ".join(sorted(DETECTOR_BACKENDS))
        raise ValueError(
            f"unknown detector backend {settings.detector_backend!r}; known: {known}"
        ) from None
    return factory(settings)
