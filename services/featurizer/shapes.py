"""A synthetic shape world and the small YOLO detector trained on it (design §7).

No COCO weights can be downloaded on development and CI machines, so the featurizer's
default detector is trained here, on CPU, from ultralytics' bundled YOLOv8 yaml narrowed to
~0.9 M parameters, on seeded images of filled circles, squares, triangles and stars.
Prepared detectors are cached by a hash of their config:
``python -m services.featurizer.shapes --out DIR``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image, ImageDraw

from services.common.settings import boig_home
from services.featurizer.colors import srgb_to_lab
from services.featurizer.ultralytics_setup import import_ultralytics

logger = logging.getLogger(__name__)

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
GENERATOR_VERSION = 1
"""Bump when the images change for the same seed: it is part of the cache key."""
MANIFEST = "manifest.json"
WEIGHTS = "best.pt"
MANIFEST_FORMAT = 1

MIN_FILL_CONTRAST = 30.0
"""Least CIE76 distance (Lab units) between a shape's fill and the background under it."""
MAX_BOX_IOU = 0.1
"""Shapes may touch but not hide each other: a box overlaps another by at most this IoU."""

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class DrawnShape:
    """A shape in a generated image: its class and tight pixel box ``(x0, y0, x1, y1)``."""

    label: str
    box: Box


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that determines the prepared detector; its hash is the cache key."""

    image_size: int = 128
    """Side of the generated images and the training/inference size, in pixels."""
    train_images: int = 600
    val_images: int = 120
    max_shapes: int = 3
    seed: int = 0
    epochs: int = 40
    """40 epochs: ~230 s on 2 CPU cores to mAP50 0.94 (30 epochs: 0.90 at epoch 28)."""
    batch: int = 16
    depth_multiple: float = 0.33
    width_multiple: float = 0.125
    """Channel multiple on yolov8.yaml: 0.25 is yolov8n (3.0 M params); 0.125 gives ~0.9 M,
    which learns this world as well and runs about twice as fast on CPU."""
    max_channels: int = 1024
    mosaic: float = 0.0
    """Probability of ultralytics' 4-image mosaic augmentation. Off: at 128 px a mosaic shrinks
    shapes to a scale never seen at inference; with it, 30 epochs reached only mAP50 0.75."""
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


def default_detector_dir() -> Path:
    """Where ``make models`` puts the detector and where the featurizer looks by default."""
    return boig_home() / "models" / "yolo-shapes"


# --- the shape world ---------------------------------------------------------------------


def render_scene(
    rng: np.random.Generator,
    *,
    size: int = 128,
    max_shapes: int = 3,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> tuple[Image.Image, list[DrawnShape]]:
    """One image with 1..``max_shapes`` filled shapes on a flat or gradient background."""
    background = _background(rng, size)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    shapes: list[DrawnShape] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(30):
            label = classes[int(rng.integers(len(classes)))]
            vertices = _outline(label, rng, size)
            box = _bounds(vertices)
            if all(_iou(box, other.box) <= MAX_BOX_IOU for other in shapes):
                break
        else:
            continue  # no free spot left; fewer shapes is fine
        fill = _contrasting_fill(rng, _colors_under(background, box))
        if label == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(float(x), float(y)) for x, y in vertices], fill=fill)
        shapes.append(DrawnShape(label=label, box=box))
    return image, shapes


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Background pixels (H, W, 3): a flat colour or a linear gradient at a random angle."""
    start = rng.integers(0, 256, 3)
    if rng.random() < 0.5:
        return np.broadcast_to(start, (size, size, 3)).astype(np.uint8)
    end = rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size]
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(1e-9, float(ramp.max() - ramp.min()))
    pixels: np.ndarray = np.round(start + (end - start) * ramp[..., None]).astype(np.uint8)
    return pixels


def _colors_under(background: np.ndarray, box: Box) -> np.ndarray:
    """Corner and centre colours of the background under ``box``: a gradient's extremes there."""
    x0, y0, x1, y1 = (int(v) for v in box)
    x1, y1 = min(x1, background.shape[1] - 1), min(y1, background.shape[0] - 1)
    xs = [x0, x1, x0, x1, (x0 + x1) // 2]
    ys = [y0, y0, y1, y1, (y0 + y1) // 2]
    return background[ys, xs].astype(np.float64)


def _contrasting_fill(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    background_lab = srgb_to_lab(background)
    fill = rng.integers(0, 256, 3)
    for _ in range(50):
        distance = np.sqrt(((srgb_to_lab(fill) - background_lab) ** 2).sum(axis=-1)).min()
        if distance >= MIN_FILL_CONTRAST:
            break
        fill = rng.integers(0, 256, 3)
    return int(fill[0]), int(fill[1]), int(fill[2])


def _outline(label: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Vertices (N, 2) of the shape placed at random, fully inside the image."""
    radius = rng.uniform(0.09, 0.22) * size
    rotation = rng.uniform(0, 2 * math.pi)
    if label == "circle":
        angles = np.array([0, math.pi / 2, math.pi, 3 * math.pi / 2])
        points = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif label == "square":
        # Mostly upright: a square turned by 45° is a diamond, which reads as another shape.
        turn = rng.uniform(-math.pi / 9, math.pi / 9)
        angles = turn + math.pi / 4 + np.arange(4) * math.pi / 2
        points = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif label == "triangle":
        angles = rotation + np.arange(3) * 2 * math.pi / 3
        points = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif label == "star":
        angles = rotation + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    else:
        raise ValueError(f"unknown shape {label!r}; known: {', '.join(SHAPE_CLASSES)}")
    low, high = points.min(axis=0), points.max(axis=0)
    # Keep the whole shape inside the image, one pixel clear of the border.
    center_x = rng.uniform(1 - low[0], size - 1 - high[0])
    center_y = rng.uniform(1 - low[1], size - 1 - high[1])
    return np.asarray(points + np.array([center_x, center_y]), dtype=np.float64)


def _bounds(vertices: np.ndarray) -> Box:
    x0, y0 = vertices.min(axis=0)
    x1, y1 = vertices.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes in the same units."""
    return _iou(a, b)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: each image depends only on (seed, split, index)."""
    return np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split], index])


def yolo_label_lines(shapes: list[DrawnShape], *, size: int, classes: tuple[str, ...]) -> list[str]:
    """YOLO txt rows ``class x_center y_center width height``, normalized to [0, 1]."""
    lines = []
    for shape in shapes:
        x0, y0, x1, y1 = shape.box
        lines.append(
            f"{classes.index(shape.label)} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
            f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
        )
    return lines


def write_dataset(out_dir: Path, config: DetectorConfig = DEFAULT_CONFIG) -> Path:
    """Write an ultralytics dataset (images/ and labels/ for train and val); return data.yaml."""
    for split, count in (("train", config.train_images), ("val", config.val_images)):
        images_dir = out_dir / "images" / split
        labels_dir = out_dir / "labels" / split
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, shapes = render_scene(
                scene_rng(config.seed, split, index),
                size=config.image_size,
                max_shapes=config.max_shapes,
                classes=config.classes,
            )
            stem = f"{split}-{index:05d}"
            image.save(images_dir / f"{stem}.png")
            rows = yolo_label_lines(shapes, size=config.image_size, classes=config.classes)
            (labels_dir / f"{stem}.txt").write_text("".join(f"{row}\n" for row in rows))
    data_yaml = out_dir / "data.yaml"
    names = "\n".join(f"  {index}: {name}" for index, name in enumerate(config.classes))
    data_yaml.write_text(
        f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data_yaml


# --- training and the cache --------------------------------------------------------------


def prepare_detector(
    out_dir: Path,
    *,
    config: DetectorConfig = DEFAULT_CONFIG,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return ``out_dir/best.pt`` trained for ``config``, training it first unless cached.

    ``out_dir/manifest.json`` records the config key, metrics, class names and the weights'
    sha256; a folder whose manifest names another key is replaced. Training happens in a
    temporary sibling folder that is renamed into place, under a file lock, so concurrent
    callers train once and no reader ever sees a half-written detector.
    """
    out_dir = Path(out_dir)
    report = progress or (lambda message: logger.info("%s", message))
    cached = cached_detector(out_dir, config)
    if cached is not None:
        return cached
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        cached = cached_detector(out_dir, config)  # another process may have finished meanwhile
        if cached is not None:
            return cached
        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
        try:
            staged = _train(work, config, report)
            _publish(staged, out_dir, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    weights = out_dir / WEIGHTS
    report(f"detector ready: {weights}")
    return weights


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a prepared detector folder, or None if there is none readable."""
    try:
        manifest: dict[str, Any] = json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest


def cached_detector(out_dir: Path, config: DetectorConfig = DEFAULT_CONFIG) -> Path | None:
    """The weights in ``out_dir`` if they were prepared for ``config``; None otherwise."""
    manifest = read_manifest(out_dir)
    weights = Path(out_dir) / WEIGHTS
    if manifest is None or manifest.get("config_key") != config.key() or not weights.is_file():
        return None
    return weights


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _publish(staged: Path, out_dir: Path, work: Path) -> None:
    # rename() is atomic but cannot replace a non-empty folder: move a stale one aside first.
    if out_dir.exists():
        os.rename(out_dir, work / "previous")
    os.rename(staged, out_dir)


def _train(work: Path, config: DetectorConfig, report: Callable[[str], None]) -> Path:
    started = time.perf_counter()
    report(f"writing {config.train_images}+{config.val_images} synthetic shape images")
    data_yaml = write_dataset(work / "data", config)
    model_yaml = _write_model_yaml(work, config)

    YOLO = import_ultralytics().YOLO  # heavy: torch and ultralytics load only when training
    from ultralytics.utils import LOGGER

    model = YOLO(str(model_yaml), task="detect")
    parameters = sum(p.numel() for p in model.model.parameters())
    report(
        f"training {parameters / 1e6:.2f} M-parameter YOLO "
        f"for {config.epochs} epochs on {config.device}"
    )

    def on_epoch_end(trainer: Any) -> None:
        if trainer.epoch + 1 > trainer.epochs:
            return  # ultralytics fires this once more for the final validation of best.pt
        map50 = trainer.metrics.get("metrics/mAP50(B)", float("nan"))
        elapsed = time.perf_counter() - started
        report(f"epoch {trainer.epoch + 1}/{trainer.epochs}: mAP50 {map50:.3f} ({elapsed:.0f} s)")

    model.add_callback("on_fit_epoch_end", on_epoch_end)
    previous_level = LOGGER.level
    # Silences ultralytics' per-batch lines and progress bars; the callback reports progress.
    LOGGER.setLevel(logging.WARNING)
    try:
        model.train(
            data=str(data_yaml),
            epochs=config.epochs,
            imgsz=config.image_size,
            batch=config.batch,
            device=config.device,
            seed=config.seed,
            deterministic=True,
            workers=0,
            project=str(work / "runs"),
            name="train",
            exist_ok=True,
            plots=False,
            verbose=False,
            amp=config.device != "cpu",
            mosaic=config.mosaic,
            cache="ram",  # 600 small images: decode them once, not every epoch
            val=True,
        )
    finally:
        LOGGER.setLevel(previous_level)
    best = work / "runs" / "train" / "weights" / WEIGHTS
    if not best.is_file():
        raise RuntimeError(f"ultralytics finished without writing {best}")
    metrics = _final_metrics(model)
    train_seconds = time.perf_counter() - started
    staged = work / "result"
    staged.mkdir()
    shutil.copy2(best, staged / WEIGHTS)
    _write_manifest(staged, config, metrics, parameters, train_seconds)
    report(
        f"trained in {train_seconds:.0f} s: mAP50 {metrics['map50']:.3f}, "
        f"mAP50-95 {metrics['map50_95']:.3f}"
    )
    return staged


def _write_model_yaml(work: Path, config: DetectorConfig) -> Path:
    import yaml  # PyYAML, an ultralytics dependency

    spec = _bundled_yolov8_spec()
    spec["nc"] = len(config.classes)
    spec["scales"] = {"n": [config.depth_multiple, config.width_multiple, config.max_channels]}
    # ultralytics reads the scale letter from the file name ("yolov8n..."), not from the yaml.
    path = work / "yolov8n-shapes.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _bundled_yolov8_spec() -> dict[str, Any]:
    """ultralytics' bundled yolov8.yaml as a dict, read from the installed package."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ultralytics is not installed; install the featurizer extra")
    package = Path(next(iter(spec.submodule_search_locations)))
    loaded: dict[str, Any] = yaml.safe_load((package / "cfg/models/v8/yolov8.yaml").read_text())
    return loaded


def _final_metrics(model: Any) -> dict[str, float]:
    box = getattr(getattr(model, "metrics", None), "box", None)
    if box is None:
        raise RuntimeError("ultralytics returned no validation metrics")
    return {"map50": float(box.map50), "map50_95": float(box.map)}


def _write_manifest(
    staged: Path,
    config: DetectorConfig,
    metrics: dict[str, float],
    parameters: int,
    train_seconds: float,
) -> None:
    import torch
    import ultralytics

    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "yolo-shapes",
        "config_key": config.key(),
        "config": dataclasses.asdict(config),
        "generator_version": GENERATOR_VERSION,
        "classes": list(config.classes),
        "metrics": metrics,
        "parameters": parameters,
        "train_seconds": round(train_seconds, 1),
        "weights": {"file": WEIGHTS, "sha256": sha256_file(staged / WEIGHTS)},
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# --- CLI ---------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, help="Prepare the synthetic-shapes YOLO detector.")


@cli.command()
def main(
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: $BOIG_HOME/models/yolo-shapes)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = DEFAULT_CONFIG.epochs,
    device: Annotated[str, typer.Option(help="Training device: cpu, cuda, cuda:N.")] = "cpu",
    mosaic: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Mosaic probability.")
    ] = DEFAULT_CONFIG.mosaic,
) -> None:
    """Train (or find cached) the default shapes detector and print where its weights are."""
    config = dataclasses.replace(DEFAULT_CONFIG, epochs=epochs, device=device, mosaic=mosaic)
    weights = prepare_detector(out or default_detector_dir(), config=config, progress=typer.echo)
    manifest = read_manifest(weights.parent) or {}
    typer.echo(json.dumps({"weights": str(weights), "metrics": manifest.get("metrics")}))


if __name__ == "__main__":
    cli()
