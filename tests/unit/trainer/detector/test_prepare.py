"""Preparing the shapes detector: trained once, then found by its config's manifest."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from typer.testing import CliRunner

from services.common.hashing import file_sha256
from services.common.shapes import SHAPE_CLASSES
from services.trainer.detector.config import DEFAULT_CONFIG, DetectorConfig
from services.trainer.detector.prepare import (
    MANIFEST,
    cached_detector,
    cli,
    prepare_detector,
    read_manifest,
)

SMALL = DetectorConfig(train_images=6, val_images=3, image_size=96)


def test_a_cached_detector_is_returned_without_training(shape_detector_weights: Path) -> None:
    started = time.perf_counter()
    assert prepare_detector(shape_detector_weights.parent) == shape_detector_weights
    assert time.perf_counter() - started < 1.0
    manifest = read_manifest(shape_detector_weights.parent)
    assert manifest is not None
    assert manifest["config_key"] == DEFAULT_CONFIG.key()
    assert manifest["classes"] == list(SHAPE_CLASSES)
    assert manifest["weights"]["sha256"] == file_sha256(shape_detector_weights)
    # Its val set holds faint, tiny, border-cut and textured shapes and shape-free images
    # (generator v2): the default reaches 0.78 there (v1's plain world gave 0.94).
    assert manifest["metrics"]["map50"] >= 0.7


def test_only_a_manifest_for_the_same_config_is_a_cache_hit(tmp_path: Path) -> None:
    assert cached_detector(tmp_path, SMALL) is None
    (tmp_path / "best.pt").write_bytes(b"weights")
    other = dataclasses.replace(SMALL, epochs=1)
    (tmp_path / MANIFEST).write_text(json.dumps({"config_key": other.key()}))
    assert cached_detector(tmp_path, SMALL) is None
    assert cached_detector(tmp_path, other) == tmp_path / "best.pt"
    (tmp_path / MANIFEST).write_text(json.dumps({"config_key": SMALL.key()}))
    # A hit is returned as is, without training (which would take minutes).
    assert prepare_detector(tmp_path, config=SMALL) == tmp_path / "best.pt"
    (tmp_path / "best.pt").unlink()
    assert cached_detector(tmp_path, SMALL) is None
    (tmp_path / MANIFEST).write_text("{not json")
    assert read_manifest(tmp_path) is None


def test_cli_prints_the_weights_of_the_cached_detector(shape_detector_weights: Path) -> None:
    result = CliRunner().invoke(cli, ["--out", str(shape_detector_weights.parent)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    assert printed["weights"] == str(shape_detector_weights)
    assert printed["metrics"]["map50"] >= 0.7
