"""The detector interface every object-detection backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from PIL import Image

from services.common.contracts import DetectedObject, ModelInfo


@runtime_checkable
class Detector(Protocol):
    """Finds objects in images. Implementations need not be thread-safe: callers serialize."""

    @property
    def info(self) -> ModelInfo:
        """What was loaded: weights path or name, and a content hash as version."""
        ...

    def detect(self, images: list[Image.Image]) -> list[list[DetectedObject]]:
        """Objects of each image (same order), best first, boxes normalized to [0, 1]."""
        ...
