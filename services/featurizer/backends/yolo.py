"""Object detection with an ultralytics YOLO weights file (never downloaded)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image

from services.common.contracts import DetectedObject, ModelInfo
from services.common.errors import BackendError, ModelUnavailable
from services.common.hashing import file_sha256
from services.common.ultralytics_setup import import_ultralytics

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DEFAULT_IMAGE_SIZE = 640
"""Inference size for weights that do not record the size they were trained at."""

_LABEL_JUNK = re.compile(r"[^a-z0-9 -]+")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*( [a-z0-9_-]+)*$")  # contracts.Name


class YoloDetector:
    """A loaded ultralytics detection model. Not thread-safe: one ``detect`` at a time."""

    def __init__(
        self,
        model: Any,
        *,
        info: ModelInfo,
        device: str,
        confidence: float,
        image_size: int,
        max_objects: int,
    ) -> None:
        self._model = model
        self._info = info
        self._device = device
        self._confidence = confidence
        self._image_size = image_size
        self._max_objects = max_objects
        self._labels = {
            int(index): clean_label(str(name), int(index)) for index, name in model.names.items()
        }

    @classmethod
    def load(
        cls,
        weights: Path,
        *,
        device: str = "auto",
        confidence: float = 0.25,
        image_size: int | None = None,
        max_objects: int = 20,
        cpu_threads: int | None = None,
        sha256: str | None = None,
    ) -> YoloDetector:
        """Load and warm up ``weights``; ModelUnavailable if the file is missing, not the
        pinned file, or unusable.

        A ``.pt`` file is a pickle: loading it runs whatever code it carries. So its sha256
        is checked first, against ``sha256`` or else the one the ``manifest.json`` beside it
        records (written by `make models`); weights pinned by neither are refused.
        ``cpu_threads`` sets torch's (process-wide) CPU thread count when running on CPU;
        None means all usable cores but one, which is left to colour analysis.
        """
        weights = Path(weights).expanduser()
        # Checked here, not left to ultralytics: given a name it does not find, it downloads.
        if not weights.is_file():
            raise ModelUnavailable(
                f"detector weights {weights} not found: run `make models` to train the default "
                "shapes detector, or set BOIG_FEATURIZER_DETECTOR_WEIGHTS to an ultralytics "
                "weights file (e.g. yolov8n.pt)"
            )
        manifest = _manifest(weights)
        digest = _verified_sha256(weights, sha256, manifest)
        YOLO = import_ultralytics().YOLO

        resolved_device = resolve_device(device)
        if resolved_device == "cpu":
            _set_torch_threads(cpu_threads)
        try:
            model = YOLO(str(weights))
        except Exception as exc:  # ultralytics raises many types for a bad file
            raise ModelUnavailable(f"could not load detector weights {weights}: {exc}") from exc
        if model.task != "detect":
            raise ModelUnavailable(f"{weights} is a {model.task} model; a detect model is needed")
        size = image_size or int(model.overrides.get("imgsz") or DEFAULT_IMAGE_SIZE)
        # A name and a hash: a server path would tell clients about the host's file system.
        info = ModelInfo(name=_model_name(weights, manifest), version=f"sha256:{digest[:16]}")
        detector = cls(
            model,
            info=info,
            device=resolved_device,
            confidence=confidence,
            image_size=size,
            max_objects=max_objects,
        )
        # The first predict builds ultralytics' predictor and fuses layers (~1 s): pay it at
        # startup rather than in the first request.
        detector.detect([Image.new("RGB", (size, size))])
        logger.info(
            "loaded detector %s (%d classes) on %s at %d px",
            weights,
            len(model.names),
            resolved_device,
            size,
        )
        return detector

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def device(self) -> str:
        return self._device

    def detect(self, images: list[Image.Image]) -> list[list[DetectedObject]]:
        if not images:
            return []
        try:
            results = self._model.predict(
                images,
                imgsz=self._image_size,
                conf=self._confidence,
                max_det=self._max_objects,
                device=self._device,
                verbose=False,
            )
        except Exception as exc:
            raise BackendError(f"detector failed: {type(exc).__name__}") from exc
        return [self._objects(result) for result in results]

    def _objects(self, result: Any) -> list[DetectedObject]:
        boxes = result.boxes
        corners = boxes.xyxyn.clamp(0.0, 1.0).cpu().tolist()
        confidences = boxes.conf.cpu().tolist()
        classes = boxes.cls.cpu().tolist()
        objects = [
            DetectedObject(
                label=self._labels.get(int(cls), f"class {int(cls)}"),
                confidence=confidence,
                box=(x0, y0, x1, y1),
            )
            for (x0, y0, x1, y1), confidence, cls in zip(corners, confidences, classes, strict=True)
        ]
        objects.sort(key=lambda obj: -obj.confidence)
        return objects


def clean_label(name: str, index: int) -> str:
    """A class name as a contract ``Name``: lower case, words separated by single spaces."""
    words = _LABEL_JUNK.sub(" ", name.lower().replace("_", " ")).split()
    label = " ".join(words)[:40].strip()
    return label if _NAME.match(label) else f"class {index}"


def resolve_device(device: str) -> str:
    """'auto' becomes cuda:0 when torch sees a GPU, else cpu; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _set_torch_threads(threads: int | None) -> None:
    # ultralytics sets OMP_NUM_THREADS=1 on import (to keep training dataloaders light), which
    # would leave inference on one core however many the machine has.
    import torch

    if threads is None:
        usable = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
        threads = max(1, (usable or 1) - 1)
    torch.set_num_threads(threads)


def _manifest(weights: Path) -> dict[str, Any]:
    """The ``manifest.json`` beside prepared weights (`make models`), or {} if unreadable."""
    try:
        manifest = json.loads((weights.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _verified_sha256(weights: Path, pinned: str | None, manifest: dict[str, Any]) -> str:
    """The weights' sha256, once it equals the pinned one; ModelUnavailable otherwise."""
    recorded = manifest.get("weights")
    # The manifest pins only the file it names: a renamed or added .pt beside it is not pinned.
    if isinstance(recorded, dict) and recorded.get("file") == weights.name:
        expected = pinned or recorded.get("sha256")
    else:
        expected = pinned
    if not isinstance(expected, str) or not expected:
        raise ModelUnavailable(
            f"detector weights {weights.name} are not pinned: loading a .pt file runs the code "
            "it carries, so its sha256 must be known first. Set BOIG_FEATURIZER_DETECTOR_SHA256 "
            "to the file's sha256 (`sha256sum` it from a source you trust)"
        )
    actual = file_sha256(weights)
    if actual != expected.strip().lower():
        raise ModelUnavailable(
            f"detector weights {weights.name} have sha256 {actual[:16]}…, not the pinned "
            f"{expected[:16]}…: refusing to load them"
        )
    return actual


def _model_name(weights: Path, manifest: dict[str, Any]) -> str:
    """What responses call the detector: the prepared model's kind, else the file's name."""
    kind = manifest.get("kind")
    return kind if isinstance(kind, str) and kind else weights.name
