"""The featurizer's logic: images -> verbalizations (palette, tones, objects); no HTTP here.

Colour and tone analysis is numpy work that any thread may run; the detector is not
thread-safe, so every detection goes through one dedicated thread, which both serializes
the model and lets a batch's colour analysis overlap its detection (torch and numpy
release the GIL while they compute).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from PIL import Image

from services.common import metrics
from services.common.contracts import DetectedObject, ModelInfo, Verbalization
from services.common.errors import BackendError
from services.featurizer.backends.base import Detector
from services.featurizer.colors import PaletteColor, extract_palettes, sample_colors
from services.featurizer.settings import FeaturizerSettings
from services.featurizer.tones import ToneAnalysis, analyze_tones

FEATURIZER_VERSION = "1.0.0"
"""Bump whenever the same image would be verbalized differently (palette, tones, naming)."""

SERVICE = "featurizer"


@dataclass(frozen=True)
class PaletteOptions:
    """How palettes are extracted; see ``FeaturizerSettings`` for each field's meaning."""

    max_colors: int = 6
    min_coverage: float = 0.02
    merge_delta_e: float = 10.0


@dataclass(frozen=True)
class ImageAnalysis:
    """Everything measured about one image, numbers included (the verbalization rounds them)."""

    palette: list[PaletteColor]
    tones: ToneAnalysis
    objects: list[DetectedObject] = field(default_factory=list)

    def verbalization(self) -> Verbalization:
        return Verbalization(
            colors=[color.to_swatch() for color in self.palette],
            tones=self.tones.tones,
            objects=self.objects,
        )


class Featurizer:
    """Turns decoded images into verbalizations. Safe to call from several threads at once."""

    def __init__(
        self, detector: Detector | None = None, *, palette: PaletteOptions | None = None
    ) -> None:
        self._detector = detector
        self._palette = palette or PaletteOptions()
        # One worker: the detector's lock and its queue in one; submit time to start time is
        # the queue wait that MODEL_QUEUE_SECONDS reports.
        self._detection_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="featurizer-detector")
            if detector is not None
            else None
        )

    @classmethod
    def from_settings(cls, settings: FeaturizerSettings, detector: Detector | None) -> Featurizer:
        return cls(
            detector,
            palette=PaletteOptions(
                max_colors=settings.palette_max_colors,
                min_coverage=settings.palette_min_coverage,
                merge_delta_e=settings.palette_merge_delta_e,
            ),
        )

    @property
    def detector_info(self) -> ModelInfo | None:
        return None if self._detector is None else self._detector.info

    @property
    def version(self) -> str:
        return FEATURIZER_VERSION

    def featurize(
        self, images: Sequence[Image.Image], *, detect_objects: bool = True
    ) -> list[Verbalization]:
        """The verbalization of each image, in order. Blocking: call it off the event loop."""
        return [
            analysis.verbalization()
            for analysis in self.analyze(images, detect_objects=detect_objects)
        ]

    def analyze(
        self, images: Sequence[Image.Image], *, detect_objects: bool = True
    ) -> list[ImageAnalysis]:
        """Like ``featurize`` but keeps the raw measurements (tone statistics, Lab values)."""
        images = list(images)
        if not images:
            return []
        pending = self._start_detection(images) if detect_objects else None
        started = time.perf_counter()
        try:
            measured = self._colors_and_tones(images)
        except BaseException:
            # The batch is lost, but the caller must not outrun its detection.
            if pending is not None:
                wait([pending])
            raise
        metrics.MODEL_SECONDS.labels(SERVICE, "colors").observe(time.perf_counter() - started)
        objects = pending.result() if pending is not None else [[] for _ in images]
        metrics.IMAGES_PROCESSED.labels(SERVICE).inc(len(images))
        return [
            ImageAnalysis(palette=palette, tones=tones, objects=found)
            for (palette, tones), found in zip(measured, objects, strict=True)
        ]

    def close(self) -> None:
        """Stop the detection thread (waits for a running batch)."""
        if self._detection_thread is not None:
            self._detection_thread.shutdown(wait=True)

    def _colors_and_tones(
        self, images: list[Image.Image]
    ) -> list[tuple[list[PaletteColor], ToneAnalysis]]:
        samples = [sample_colors(image) for image in images]
        palettes = extract_palettes(
            samples,
            max_colors=self._palette.max_colors,
            min_coverage=self._palette.min_coverage,
            merge_delta_e=self._palette.merge_delta_e,
        )
        return [
            (palette, analyze_tones(sample))
            for palette, sample in zip(palettes, samples, strict=True)
        ]

    def _start_detection(
        self, images: list[Image.Image]
    ) -> Future[list[list[DetectedObject]]] | None:
        if self._detector is None or self._detection_thread is None:
            return None
        detector = self._detector
        submitted = time.perf_counter()

        def detect() -> list[list[DetectedObject]]:
            started = time.perf_counter()
            metrics.MODEL_QUEUE_SECONDS.labels(SERVICE, "detect").observe(started - submitted)
            found = detector.detect(images)
            metrics.MODEL_SECONDS.labels(SERVICE, "detect").observe(time.perf_counter() - started)
            if len(found) != len(images):
                raise BackendError(
                    f"detector returned {len(found)} results for {len(images)} images"
                )
            return found

        return self._detection_thread.submit(detect)
