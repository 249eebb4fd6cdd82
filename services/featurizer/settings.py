"""Settings of the featurizer service (env prefix ``BOIG_FEATURIZER_``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import (
    BatchLimits,
    ImageLimits,
    ServiceSettings,
    default_shapes_detector_dir,
)

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def default_detector_weights() -> Path:
    """Where ``make models`` puts the synthetic-shapes YOLO (``services.trainer.detector``)."""
    return default_shapes_detector_dir() / "best.pt"


class FeaturizerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BOIG_FEATURIZER_", extra="ignore", frozen=True)

    port: int = Field(default=8101, ge=0, le=65535, description="TCP port to bind.")
    detector_backend: Literal["yolo", "none"] = Field(
        default="yolo",
        description="Object detector: 'yolo' (ultralytics weights file) or 'none' (no objects).",
    )
    detector_weights: Path = Field(
        default_factory=default_detector_weights,
        description=(
            "Ultralytics weights file for the 'yolo' backend (e.g. yolov8n.pt in deployment). "
            "Never downloaded: the file must exist. Default: the synthetic-shapes model that "
            "`make models` trains under BOIG_HOME."
        ),
    )
    detector_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description=(
            "The detector weights' sha256, checked before they are loaded (a .pt file is a "
            "pickle: loading runs its code). Unset: the sha256 in the manifest.json beside the "
            "weights, which `make models` writes; weights pinned by neither are refused."
        ),
    )
    detector_confidence: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Lowest detector confidence reported as an object.",
    )
    detector_image_size: int | None = Field(
        default=None,
        ge=32,
        le=4096,
        description=(
            "Side, in pixels, images are letterboxed to for detection (a multiple of 32). "
            "Unset: the size the weights were trained at (128 for the shapes model, 640 for COCO)."
        ),
    )
    detector_max_objects: int = Field(
        default=20, ge=1, le=50, description="Most objects reported per image, best first."
    )
    device: str = Field(
        default="auto",
        description="Torch device for the detector: 'auto' (cuda if available, else cpu), 'cpu', "
        "'cuda', 'cuda:N' or 'mps'.",
    )
    detector_cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="Torch CPU threads for detection on CPU. Unset: all usable cores but one, "
        "which is left to the colour analysis that runs beside detection.",
    )
    batch_limits: BatchLimits = Field(
        default_factory=BatchLimits,
        description=(
            "Most images in one /featurize request; read from BOIG_BATCH_MAX_ITEMS, as in every "
            "service."
        ),
    )
    max_pending_requests: int = Field(
        default=8,
        ge=1,
        description="Requests decoded or analysed at once; further ones get 503 with Retry-After "
        "rather than piling decoded images up in memory.",
    )
    palette_max_colors: int = Field(
        default=6, ge=1, le=12, description="Most colours in a palette (k of the k-means)."
    )
    palette_min_coverage: float = Field(
        default=0.02,
        ge=0.0,
        lt=1.0,
        description="Colours covering less than this fraction of the image are left out.",
    )
    palette_merge_delta_e: float = Field(
        default=10.0,
        ge=0.0,
        description="Palette colours closer than this CIE76 distance (Lab units; ~2.3 is just "
        "noticeable) are merged into one.",
    )
    decode_max_side: int = Field(
        default=1024,
        ge=64,
        description=(
            "Images are decoded to at most this many pixels a side (JPEG at a reduced DCT "
            "scale, others reduced after decoding): the colour analysis samples 96 px a side "
            "and the detector reads its own input size, so more only costs memory. Width and "
            "height in answers stay the file's own."
        ),
    )
    image_limits: ImageLimits = Field(
        default_factory=ImageLimits,
        description="Decoding limits (size, pixels, formats); read from BOIG_IMAGE_* variables.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("device must be auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("detector_image_size")
    @classmethod
    def _stride_multiple(cls, value: int | None) -> int | None:
        # YOLO's largest stride is 32; other sizes are silently rounded up by ultralytics.
        if value is not None and value % 32:
            raise ValueError("detector_image_size must be a multiple of 32")
        return value
