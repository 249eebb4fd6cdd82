"""Detector backends: the real YOLO trained on the shape world, loading rules, the name table."""

from __future__ import annotations

import hashlib
import io
import json
import math
import types
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, UnidentifiedImageError

from services.common.contracts import DetectedObject
from services.common.errors import InvalidImage, ModelUnavailable
from services.common.geometry import box_iou
from services.common.images import decode_image
from services.common.settings import ImageLimits
from services.featurizer.backends import DETECTOR_BACKENDS, Detector, load_detector
from services.featurizer.backends.yolo import YoloDetector, clean_label
from services.featurizer.settings import FeaturizerSettings
from services.trainer.detector.scenes import render_negative, render_scene, scene_rng

Box = tuple[float, float, float, float]


def drawn(
    label: str, box: Box, *, fill: tuple[int, int, int], background: tuple[int, int, int]
) -> Image.Image:
    """One shape drawn by hand (not by the training generator) in a 128 px image."""
    image = Image.new("RGB", (128, 128), background)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if label == "circle":
        draw.ellipse(box, fill=fill)
    elif label == "square":
        draw.rectangle(box, fill=fill)
    elif label == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif label == "star":
        points = []
        for i in range(10):
            angle = -math.pi / 2 + i * math.pi / 5
            radius = r if i % 2 == 0 else 0.45 * r
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    return image


def normalized(box: Box, size: float = 128) -> Box:
    return (box[0] / size, box[1] / size, box[2] / size, box[3] / size)


HAND_DRAWN = [
    ("circle", (30.0, 34.0, 90.0, 94.0), (220, 30, 30), (245, 245, 245)),
    ("square", (20.0, 40.0, 70.0, 90.0), (20, 40, 160), (200, 200, 200)),
    ("triangle", (40.0, 20.0, 100.0, 72.0), (250, 200, 0), (30, 30, 60)),
    ("star", (50.0, 45.0, 110.0, 105.0), (255, 255, 255), (0, 120, 80)),
]


@pytest.mark.parametrize(
    ("label", "box", "fill", "background"), HAND_DRAWN, ids=[c[0] for c in HAND_DRAWN]
)
def test_detects_hand_drawn_shapes_with_the_right_label_and_box(
    shape_detector: YoloDetector,
    label: str,
    box: Box,
    fill: tuple[int, int, int],
    background: tuple[int, int, int],
) -> None:
    # The triangle's drawn box is its vertices' box; the star's is a bit inside its circle.
    [objects] = shape_detector.detect([drawn(label, box, fill=fill, background=background)])
    assert objects, f"nothing detected for the {label}"
    best = objects[0]
    assert best.label == label
    target = normalized(box) if label != "star" else _star_box(box)
    assert box_iou(best.box, target) >= 0.5, (best, target)


def _star_box(box: Box) -> Box:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    xs = [
        cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5)
        for i in range(10)
    ]
    ys = [
        cy + (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5)
        for i in range(10)
    ]
    return normalized((min(xs), min(ys), max(xs), max(ys)))


def _recall(detector: YoloDetector, seed: int, *, count: int = 40, min_side: float = 0.0) -> float:
    """Share of the shapes of fresh scenes (box side >= ``min_side`` of the image) found with
    the right label and box IoU >= 0.5; the scenes go through the detector in one batch."""
    scenes = [render_scene(scene_rng(seed, "test", index)) for index in range(count)]
    results = detector.detect([image for image, _ in scenes])
    assert len(results) == len(scenes)
    found = total = 0
    for (_, shapes), objects in zip(scenes, results, strict=True):
        for shape in shapes:
            target = normalized(shape.box)
            if max(target[2] - target[0], target[3] - target[1]) < min_side:
                continue
            total += 1
            found += any(o.label == shape.label and box_iou(o.box, target) >= 0.5 for o in objects)
    assert total >= count // 2
    return found / total


@pytest.mark.usefixtures("plain_world")
def test_finds_clearly_drawn_shapes_of_fresh_scenes(shape_detector: YoloDetector) -> None:
    # Measured with the default detector: 1.00 of shapes over a fifth of the side, 0.89 of all
    # (the smallest are ~12 px).
    assert _recall(shape_detector, 0, min_side=0.2) >= 0.9
    assert _recall(shape_detector, 0) >= 0.75


def test_finds_most_shapes_of_the_full_world(shape_detector: YoloDetector) -> None:
    # Faint, tiny, border-cut, textured and JPEG-compressed ones too. Measured: 0.86 of shapes
    # over a fifth of the side, 0.76 of all.
    assert _recall(shape_detector, 0, min_side=0.2) >= 0.75
    assert _recall(shape_detector, 0) >= 0.6


def test_stays_mostly_silent_on_shape_free_images(shape_detector: YoloDetector) -> None:
    negatives = [render_negative(scene_rng(0, "test", index)) for index in range(40)]
    results = shape_detector.detect(negatives)
    confident = sum(any(o.confidence >= 0.5 for o in objects) for objects in results)
    assert confident <= 8  # measured: 3 of 40 (textures with potato-like blobs)


def test_boxes_are_normalized_for_any_image_size(shape_detector: YoloDetector) -> None:
    small = drawn(
        "circle", (30.0, 34.0, 90.0, 94.0), fill=(220, 30, 30), background=(245, 245, 245)
    )
    large = small.resize((512, 384), Image.Resampling.NEAREST)  # not square: letterboxed
    [[found]] = [objects[:1] for objects in shape_detector.detect([large])]
    assert found.label == "circle"
    assert box_iou(found.box, normalized((30, 34, 90, 94))) >= 0.5
    assert all(0.0 <= v <= 1.0 for v in found.box)


def test_batch_results_equal_single_image_results(shape_detector: YoloDetector) -> None:
    images = [render_scene(scene_rng(1, "test", index))[0] for index in range(4)]
    batched = shape_detector.detect(images)
    singles = [shape_detector.detect([image])[0] for image in images]
    assert [[o.label for o in objs] for objs in batched] == [
        [o.label for o in objs] for objs in singles
    ]
    for batch_objects, single_objects in zip(batched, singles, strict=True):
        for a, b in zip(batch_objects, single_objects, strict=True):
            assert box_iou(a.box, b.box) > 0.95


def test_empty_batch_and_blank_image(shape_detector: YoloDetector) -> None:
    assert shape_detector.detect([]) == []
    assert shape_detector.detect([Image.new("RGB", (128, 128), (90, 90, 90))]) == [[]]


def test_info_names_the_weights_and_their_hash(
    shape_detector: YoloDetector, shape_detector_weights: Path
) -> None:
    assert isinstance(shape_detector, Detector)
    # A name and a hash, never the server's path.
    assert shape_detector.info.name == "yolo-shapes"
    assert str(shape_detector_weights.parent) not in shape_detector.info.model_dump_json()
    digest = hashlib.sha256(shape_detector_weights.read_bytes()).hexdigest()
    assert shape_detector.info.version == f"sha256:{digest[:16]}"
    assert shape_detector.image_size == 128  # read from the weights' training arguments


def test_missing_weights_raise_model_unavailable_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="make models") as raised:
        YoloDetector.load(tmp_path / "nope.pt")
    assert "BOIG_FEATURIZER_DETECTOR_WEIGHTS" in raised.value.message
    assert not (tmp_path / "nope.pt").exists()  # nothing was downloaded in its place


def test_corrupt_weights_raise_model_unavailable(tmp_path: Path) -> None:
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"this is not a checkpoint")
    pin = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(ModelUnavailable, match="could not load"):
        YoloDetector.load(weights, sha256=pin)


def _never_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    def unpickle(*_: object, **__: object) -> None:
        raise AssertionError("the weights were loaded before their hash was checked")

    fake = types.SimpleNamespace(YOLO=unpickle)
    monkeypatch.setattr("services.featurizer.backends.yolo.import_ultralytics", lambda: fake)


def test_unpinned_weights_are_refused_before_they_are_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _never_unpickled(monkeypatch)
    weights = tmp_path / "yolov8n.pt"
    weights.write_bytes(b"pickled code")
    with pytest.raises(ModelUnavailable, match="not pinned") as raised:
        YoloDetector.load(weights)
    assert "BOIG_FEATURIZER_DETECTOR_SHA256" in raised.value.message


def test_weights_that_differ_from_their_pin_are_refused_before_they_are_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape_detector_weights: Path
) -> None:
    _never_unpickled(monkeypatch)
    swapped = tmp_path / "best.pt"
    swapped.write_bytes(b"someone else's pickle")
    manifest = json.loads((shape_detector_weights.parent / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))  # the pin of the real file
    with pytest.raises(ModelUnavailable, match="refusing to load"):
        YoloDetector.load(swapped)
    with pytest.raises(ModelUnavailable, match="refusing to load"):  # an explicit pin too
        YoloDetector.load(shape_detector_weights, sha256="0" * 64)


def test_backend_table_builds_by_name(shape_detector_weights: Path) -> None:
    assert set(DETECTOR_BACKENDS) == {"yolo", "none"}
    assert load_detector(FeaturizerSettings(detector_backend="none")) is None
    detector = load_detector(
        FeaturizerSettings(
            detector_backend="yolo", detector_weights=shape_detector_weights, device="cpu"
        )
    )
    assert isinstance(detector, YoloDetector)
    assert detector.info.name == "yolo-shapes"


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("person", "person"),
        ("traffic_light", "traffic light"),
        ("Teddy Bear", "teddy bear"),
        ("hair  drier", "hair drier"),
        ("!!!", "class 7"),
        ("-dash", "class 7"),
    ],
)
def test_class_names_become_contract_labels(name: str, label: str) -> None:
    assert clean_label(name, 7) == label
    DetectedObject(label=clean_label(name, 7), confidence=0.5, box=(0.0, 0.0, 1.0, 1.0))


def test_loading_ultralytics_leaves_untrusted_image_decoding_alone(
    shape_detector: YoloDetector,
) -> None:
    # ultralytics patches PIL.Image.open to pip-install pi-heif on unknown files; the
    # featurizer undoes that, so garbage stays a 422 and never triggers an install.
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"definitely not an image"))
    with pytest.raises(InvalidImage, match="not a readable image"):
        decode_image(b"definitely not an image", limits=ImageLimits())
