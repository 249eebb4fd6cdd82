"""Fixtures of the featurizer tests: the real shapes detector (its weights are trained once
per machine by the ``shape_detector_weights`` fixture of ``tests/unit/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.featurizer.backends.yolo import YoloDetector


@pytest.fixture(scope="session")
def shape_detector(shape_detector_weights: Path) -> YoloDetector:
    return YoloDetector.load(shape_detector_weights, device="cpu")
