"""What determines a prepared shapes detector: the training images and the YOLO recipe."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from services.common.shapes import SHAPE_CLASSES
from services.trainer.detector.scenes import GENERATOR_VERSION


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that determines the prepared detector; its hash is the cache key."""

    image_size: int = 128
    """Side of the generated images and the training/inference size, in pixels."""
    train_images: int = 900
    val_images: int = 150
    max_shapes: int = 3
    negative_fraction: float = 0.3
    """Share of images with no shape (textures, distractors): they teach "background"."""
    seed: int = 0
    epochs: int = 50
    """50 epochs of 900 images: ~420 s on 2 idle CPU cores (515 s shared) to mAP50 0.82 on
    this world's val set, which holds faint, tiny, cut and textured shapes and shape-free
    images. 38 epochs reached 0.78-0.79, and on one machine saw a star at 0.52 in the demo's
    coffee photo (its spoon); at 50 the same machine sees at most a circle at 0.47 there
    (the cup's round rim)."""
    batch: int = 16
    nominal_batch: int = 16
    """Images per optimizer step (ultralytics' ``nbs``: it accumulates gradients over
    ``nominal_batch / batch`` batches). Its default of 64 leaves only ~500 steps in a CPU
    budget; with one step per batch (together with ``scale_augment`` 0.25 and uniformly drawn
    shape sizes) val mAP50 after 35 epochs of 900 images rose from 0.42 to 0.75."""
    depth_multiple: float = 0.33
    width_multiple: float = 0.125
    """Channel multiple on yolov8.yaml: 0.25 is yolov8n (3.0 M params); 0.125 gives ~0.9 M,
    which learns this world as well and runs about twice as fast on CPU."""
    max_channels: int = 1024
    scale_augment: float = 0.25
    """ultralytics' random zoom gain (its default 0.5): the generator already spans scales, and
    zooming a 13 px shape out by half leaves it unrecognisable."""
    mosaic: float = 0.0
    """Probability of ultralytics' 4-image mosaic augmentation. Off: at 128 px a mosaic shrinks
    shapes to a scale never seen at inference; with it (generator v1), 30 epochs reached only
    mAP50 0.75."""
    device: str = "cpu"
    """Training device. Results are cached per config, so a GPU-trained model is another key."""
    classes: tuple[str, ...] = SHAPE_CLASSES

    def key(self) -> str:
        """Content hash of the config and generator version: names a cached detector."""
        payload = json.dumps(
            {"config": dataclasses.asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


DEFAULT_CONFIG = DetectorConfig()
