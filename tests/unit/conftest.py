"""Fixtures the featurizer's and the detector trainer's tests share: the real shapes detector,
trained once per machine, and a plain version of the shape world it is trained on.

The detector is trained into the same cache `make models` fills
(``$BOIG_HOME/models/yolo-shapes``), so later sessions (and CI after `make models`) find it
there and start instantly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import default_shapes_detector_dir
from services.trainer.detector import scenes
from services.trainer.detector.prepare import prepare_detector


@pytest.fixture(scope="session")
def shape_detector_weights() -> Path:
    return prepare_detector(default_shapes_detector_dir())


@pytest.fixture
def plain_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shape world without its hard parts: flat or gradient grounds, no distractors, no
    faint or border-cut shapes, no blur or JPEG."""
    monkeypatch.setattr(scenes, "BACKGROUND_KINDS", {"flat": 0.5, "gradient": 0.5})
    monkeypatch.setattr(scenes, "DISTRACTOR_FRACTION", 0.0)
    monkeypatch.setattr(scenes, "LOW_CONTRAST_FRACTION", 0.0)
    monkeypatch.setattr(scenes, "CUT_FRACTION", 0.0)
    monkeypatch.setattr(scenes, "BLUR_FRACTION", 0.0)
    monkeypatch.setattr(scenes, "JPEG_FRACTION", 0.0)
