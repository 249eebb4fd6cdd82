"""The Featurizer: verbalizations from images, with and without the real detector."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image, ImageDraw

from services.common import metrics
from services.common.contracts import Tone
from services.common.errors import BackendError
from services.common.verbalization import parse, render
from services.featurizer.backends.yolo import YoloDetector
from services.featurizer.service import FEATURIZER_VERSION, Featurizer, PaletteOptions
from services.featurizer.settings import FeaturizerSettings
from services.trainer.detector.scenes import render_scene, scene_rng


def red_circle_on_white() -> Image.Image:
    image = Image.new("RGB", (128, 128), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((24, 24, 104, 104), fill=(255, 0, 0))
    return image


def test_colours_and_tones_without_a_detector() -> None:
    featurizer = Featurizer(None)
    [verbalization] = featurizer.featurize([red_circle_on_white()])
    assert [(c.name, c.rgb) for c in verbalization.colors] == [
        ("white", (255, 255, 255)),
        ("red", (255, 0, 0)),
    ]
    # π·40² / 128² = 0.307, measured on a 96 px sample of the image.
    assert verbalization.colors[1].coverage == pytest.approx(0.307, abs=0.02)
    assert Tone.BRIGHT in verbalization.tones
    assert verbalization.objects == []
    assert parse(render(verbalization)) == verbalization
    assert featurizer.detector_info is None
    assert featurizer.version == FEATURIZER_VERSION


def test_objects_come_from_the_detector(shape_detector: YoloDetector) -> None:
    featurizer = Featurizer(shape_detector)
    try:
        [with_objects] = featurizer.featurize([red_circle_on_white()])
        [without] = featurizer.featurize([red_circle_on_white()], detect_objects=False)
    finally:
        featurizer.close()
    assert [o.label for o in with_objects.objects][:1] == ["circle"]
    assert without.objects == []
    assert with_objects.colors == without.colors and with_objects.tones == without.tones
    assert featurizer.detector_info == shape_detector.info


def test_concurrent_batches_give_the_sequential_answers(shape_detector: YoloDetector) -> None:
    featurizer = Featurizer(shape_detector)
    batches = [
        [render_scene(scene_rng(2, "test", 4 * b + i))[0] for i in range(4)] for b in range(4)
    ]
    try:
        sequential = [featurizer.featurize(batch) for batch in batches]
        with ThreadPoolExecutor(max_workers=4) as pool:
            concurrent = list(pool.map(featurizer.featurize, batches))
    finally:
        featurizer.close()
    assert concurrent == sequential


def test_records_images_and_compute_time() -> None:
    def sample(name: str, labels: dict[str, str]) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    images_before = sample("boig_images_processed_total", {"service": "featurizer"})
    colors_before = sample(
        "boig_model_compute_seconds_count", {"service": "featurizer", "operation": "colors"}
    )
    Featurizer(None).featurize([red_circle_on_white()] * 3)
    assert sample("boig_images_processed_total", {"service": "featurizer"}) == images_before + 3
    assert (
        sample("boig_model_compute_seconds_count", {"service": "featurizer", "operation": "colors"})
        == colors_before + 1
    )


def test_palette_options_apply() -> None:
    featurizer = Featurizer.from_settings(
        FeaturizerSettings(detector_backend="none", palette_max_colors=1, palette_min_coverage=0.0),
        None,
    )
    [verbalization] = featurizer.featurize([red_circle_on_white()])
    assert len(verbalization.colors) == 1
    assert (
        Featurizer(None, palette=PaletteOptions(min_coverage=0.5))
        .featurize([red_circle_on_white()])[0]
        .colors[0]
        .name
        == "white"
    )


def test_empty_batch() -> None:
    assert Featurizer(None).featurize([]) == []


class _MiscountingDetector:
    """Wiring only: a detector that breaks its contract, to check the featurizer notices."""

    info = None

    def detect(self, images: list[Image.Image]) -> list[list[object]]:
        return []


def test_a_detector_that_drops_results_is_a_backend_error() -> None:
    featurizer = Featurizer(_MiscountingDetector())  # type: ignore[arg-type]
    try:
        with pytest.raises(BackendError, match="0 results for 1 images"):
            featurizer.featurize([red_circle_on_white()])
    finally:
        featurizer.close()
