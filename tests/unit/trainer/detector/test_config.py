"""The detector's cache key: one per config, changed by every field."""

from __future__ import annotations

import dataclasses

from services.trainer.detector.config import DEFAULT_CONFIG, DetectorConfig


def test_config_key_is_stable_and_changes_with_every_field() -> None:
    assert DEFAULT_CONFIG.key() == DetectorConfig().key()
    changed = {
        "image_size": 160,
        "train_images": 601,
        "val_images": 121,
        "max_shapes": 2,
        "negative_fraction": 0.5,
        "seed": 1,
        "epochs": 1,
        "batch": 8,
        "nominal_batch": 64,
        "depth_multiple": 0.5,
        "width_multiple": 0.25,
        "max_channels": 512,
        "scale_augment": 0.5,
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
