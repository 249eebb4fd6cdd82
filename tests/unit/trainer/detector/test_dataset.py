"""The shape world as an ultralytics dataset: deterministic images and matching YOLO labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.shapes import SHAPE_CLASSES
from services.trainer.detector.config import DetectorConfig
from services.trainer.detector.dataset import write_dataset
from services.trainer.detector.scenes import render_example, scene_rng

SMALL = DetectorConfig(train_images=6, val_images=3, image_size=96)


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
            assert 0 <= len(rows) <= 3
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


def test_negatives_get_empty_label_files(tmp_path: Path) -> None:
    config = dataclasses.replace(SMALL, train_images=24, val_images=4, negative_fraction=0.5)
    write_dataset(tmp_path, config)
    empty = 0
    for index in range(24):
        stem = f"train-{index:05d}"
        assert (tmp_path / "images" / "train" / f"{stem}.png").is_file()
        text = (tmp_path / "labels" / "train" / f"{stem}.txt").read_text()
        _, drawn = render_example(
            scene_rng(config.seed, "train", index), size=96, negative_fraction=0.5
        )
        assert len(text.splitlines()) == len(drawn)
        empty += text == ""
    assert 4 <= empty <= 20


def test_labels_match_the_drawn_boxes(tmp_path: Path) -> None:
    write_dataset(tmp_path, SMALL)
    _, shapes = render_example(
        scene_rng(SMALL.seed, "train", 0), size=96, negative_fraction=SMALL.negative_fraction
    )
    assert shapes
    rows = (tmp_path / "labels" / "train" / "train-00000.txt").read_text().splitlines()
    for shape, row in zip(shapes, rows, strict=True):
        cls, xc, yc, w, h = row.split()
        assert SHAPE_CLASSES[int(cls)] == shape.label
        x0, y0, x1, y1 = shape.box
        assert float(xc) == pytest.approx((x0 + x1) / 2 / 96, abs=1e-6)
        assert float(w) == pytest.approx((x1 - x0) / 96, abs=1e-6)
        assert float(yc) == pytest.approx((y0 + y1) / 2 / 96, abs=1e-6)
        assert float(h) == pytest.approx((y1 - y0) / 96, abs=1e-6)
