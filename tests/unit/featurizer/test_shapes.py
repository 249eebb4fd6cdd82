"""The synthetic shape world: deterministic images, correct YOLO labels, a cached detector."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.featurizer.shapes import (
    DEFAULT_CONFIG,
    MANIFEST,
    SHAPE_CLASSES,
    DetectorConfig,
    cached_detector,
    cli,
    prepare_detector,
    read_manifest,
    render_scene,
    scene_rng,
    sha256_file,
    write_dataset,
)

SMALL = DetectorConfig(train_images=6, val_images=3, image_size=96)


def test_scenes_are_deterministic_per_seed_split_and_index() -> None:
    first, shapes = render_scene(scene_rng(0, "train", 7))
    again, shapes_again = render_scene(scene_rng(0, "train", 7))
    assert shapes == shapes_again
    assert np.array_equal(np.asarray(first), np.asarray(again))
    other, _ = render_scene(scene_rng(0, "val", 7))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_scenes_hold_one_to_three_known_shapes_inside_the_image() -> None:
    seen: set[str] = set()
    for index in range(60):
        image, shapes = render_scene(scene_rng(3, "test", index), size=128)
        assert image.size == (128, 128) and image.mode == "RGB"
        assert 1 <= len(shapes) <= 3
        for shape in shapes:
            x0, y0, x1, y1 = shape.box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert 10 <= x1 - x0 <= 60
            seen.add(shape.label)
    assert seen == set(SHAPE_CLASSES)


def test_circles_fill_their_boxes_like_circles() -> None:
    circles = 0
    for index in range(40):
        image, shapes = render_scene(scene_rng(5, "test", index), size=128)
        pixels = np.asarray(image).astype(int)
        for shape in shapes:
            if shape.label != "circle" or any(
                other is not shape and _overlaps(shape.box, other.box) for other in shapes
            ):
                continue
            x0, y0, x1, y1 = (round(v) for v in shape.box)
            box = pixels[y0:y1, x0:x1]
            fill = box[box.shape[0] // 2, box.shape[1] // 2]
            assert not np.array_equal(fill, box[0, 0])  # a corner is background
            filled = np.all(box == fill, axis=2).mean()
            assert filled == pytest.approx(np.pi / 4, abs=0.08)
            circles += 1
    assert circles >= 5


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_dataset_is_deterministic_with_yolo_labels(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", SMALL)
    second = write_dataset(tmp_path / "b", SMALL)
    for split, count in (("train", 6), ("val", 3)):
        labels = sorted((tmp_path / "a" / "labels" / split).glob("*.txt"))
        images = sorted((tmp_path / "a" / "images" / split).glob("*.png"))
        assert len(labels) == len(images) == count
        for label_file, image_file in zip(labels, images, strict=True):
            twin = tmp_path / "b" / label_file.relative_to(tmp_path / "a")
            assert label_file.read_text() == twin.read_text()
            with (
                Image.open(image_file) as image,
                Image.open(tmp_path / "b" / image_file.relative_to(tmp_path / "a")) as twin_image,
            ):
                assert image.size == (96, 96)
                assert np.array_equal(np.asarray(image), np.asarray(twin_image))
            rows = [line.split() for line in label_file.read_text().splitlines()]
            assert 1 <= len(rows) <= 3
            for row in rows:
                assert len(row) == 5
                assert int(row[0]) in range(len(SHAPE_CLASSES))
                xc, yc, w, h = (float(v) for v in row[1:])
                assert 0 < w <= 1 and 0 < h <= 1
                assert xc - w / 2 >= 0 and xc + w / 2 <= 1 + 1e-6
                assert yc - h / 2 >= 0 and yc + h / 2 <= 1 + 1e-6
    text = first.read_text()
    assert f"path: {(tmp_path / 'a').resolve()}" in text
    assert "train: images/train" in text and "val: images/val" in text
    for index, name in enumerate(SHAPE_CLASSES):
        assert f"  {index}: {name}" in text
    assert second.read_text() != text  # only the path differs


def test_labels_match_the_drawn_boxes(tmp_path: Path) -> None:
    write_dataset(tmp_path, SMALL)
    _, shapes = render_scene(scene_rng(SMALL.seed, "train", 0), size=96)
    rows = (tmp_path / "labels" / "train" / "train-00000.txt").read_text().splitlines()
    for shape, row in zip(shapes, rows, strict=True):
        cls, xc, yc, w, h = row.split()
        assert SHAPE_CLASSES[int(cls)] == shape.label
        x0, y0, x1, y1 = shape.box
        assert float(xc) == pytest.approx((x0 + x1) / 2 / 96, abs=1e-6)
        assert float(w) == pytest.approx((x1 - x0) / 96, abs=1e-6)
        assert float(yc) == pytest.approx((y0 + y1) / 2 / 96, abs=1e-6)
        assert float(h) == pytest.approx((y1 - y0) / 96, abs=1e-6)


def test_config_key_is_stable_and_changes_with_every_field() -> None:
    assert DEFAULT_CONFIG.key() == DetectorConfig().key()
    changed = {
        "image_size": 160,
        "train_images": 601,
        "val_images": 121,
        "max_shapes": 2,
        "seed": 1,
        "epochs": 1,
        "batch": 8,
        "depth_multiple": 0.5,
        "width_multiple": 0.25,
        "max_channels": 512,
        "mosaic": 0.5,
        "device": "cuda",
        "classes": ("circle", "square"),
    }
    assert set(changed) == {f.name for f in dataclasses.fields(DetectorConfig)}
    keys = {
        dataclasses.replace(DEFAULT_CONFIG, **{name: value}).key()
        for name, value in changed.items()
    }
    assert len(keys) == len(changed) and DEFAULT_CONFIG.key() not in keys


def test_a_cached_detector_is_returned_without_training(shape_detector_weights: Path) -> None:
    started = time.perf_counter()
    assert prepare_detector(shape_detector_weights.parent) == shape_detector_weights
    assert time.perf_counter() - started < 1.0
    manifest = read_manifest(shape_detector_weights.parent)
    assert manifest is not None
    assert manifest["config_key"] == DEFAULT_CONFIG.key()
    assert manifest["classes"] == list(SHAPE_CLASSES)
    assert manifest["weights"]["sha256"] == sha256_file(shape_detector_weights)
    assert manifest["metrics"]["map50"] >= 0.9


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
    assert printed["metrics"]["map50"] >= 0.9
