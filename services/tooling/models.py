"""Prepare the embedded default models once: SmolLM2 as an HF folder, the shapes YOLO.

Both are cached under ``boig_home()/models``; a second run finds them and returns at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from services.common.settings import boig_home


def models_dir() -> Path:
    return boig_home() / "models"


def prepare_all(*, log: bool = True) -> dict[str, Path]:
    """Prepare every default model; returns where each one lives."""
    # Imported here: each pulls in torch and its model library.
    from services.describer.model_prep import prepare_smollm2
    from services.featurizer.settings import FeaturizerSettings
    from services.featurizer.shapes import prepare_detector

    prepared: dict[str, Path] = {}
    started = time.perf_counter()
    prepared["llm"] = prepare_smollm2(models_dir() / "smollm2-135m-instruct")
    if log:
        print(f"llm ready: {prepared['llm']} ({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    weights = FeaturizerSettings().detector_weights
    prepared["detector"] = prepare_detector(weights.parent)
    if log:
        print(f"detector ready: {prepared['detector']} ({time.perf_counter() - started:.1f} s)")
    (models_dir() / ".prepared").touch()
    return prepared
