"""Train the featurizer's default detector on the shape world, and cache it by config.

No COCO weights can be downloaded on development and CI machines, so the default detector is
trained here, on CPU, from ultralytics' bundled YOLOv8 yaml narrowed to ~0.9 M parameters.
Prepared detectors are cached by a hash of their config:
``python -m services.trainer.detector --out DIR``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from services.common.hashing import file_sha256
from services.common.settings import default_shapes_detector_dir
from services.common.ultralytics_setup import import_ultralytics
from services.trainer.detector.config import DEFAULT_CONFIG, DetectorConfig
from services.trainer.detector.dataset import write_dataset
from services.trainer.detector.scenes import GENERATOR_VERSION

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "best.pt"
MANIFEST_FORMAT = 1


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
            nbs=config.nominal_batch,
            scale=config.scale_augment,
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
        "weights": {"file": WEIGHTS, "sha256": file_sha256(staged / WEIGHTS)},
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


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
    weights = prepare_detector(
        out or default_shapes_detector_dir(), config=config, progress=typer.echo
    )
    manifest = read_manifest(weights.parent) or {}
    typer.echo(json.dumps({"weights": str(weights), "metrics": manifest.get("metrics")}))
