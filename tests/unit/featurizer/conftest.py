"""Fixtures of the featurizer tests: the real shapes detector, trained once per machine.

It is trained into the same cache `make models` fills (``$BOIG_HOME/models/yolo-shapes``),
so later sessions (and CI after `make models`) find it there and start instantly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.featurizer import shapes
from services.featurizer.backends.yolo import YoloDetector
from services.featurizer.shapes import default_detector_dir, prepare_detector


@pytest.fixture(scope="session")
def shape_detector_weights() -> Path:
    return prepare_detector(default_detector_dir())


@pytest.fixture(scope="session")
def shape_detector(shape_detector_weights: Path) -> YoloDetector:
    return YoloDetector.load(shape_detector_weights, device="cpu")


@pytest.fixture
def plain_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shape world without its hard parts: flat or gradient grounds, no distractors, no
    faint or border-cut shapes, no blur or JPEG."""
    monkeypatch.setattr(shapes, "BACKGROUND_KINDS", {"flat": 0.5, "gradient": 0.5})
    monkeypatch.setattr(shapes, "DISTRACTOR_FRACTION", 0.0)
    monkeypatch.setattr(shapes, "LOW_CONTRAST_FRACTION", 0.0)
    monkeypatch.setattr(shapes, "CUT_FRACTION", 0.0)
    monkeypatch.setattr(shapes, "BLUR_FRACTION", 0.0)
    monkeypatch.setattr(shapes, "JPEG_FRACTION", 0.0)
