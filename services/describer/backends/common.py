"""Helpers both backends share: token-prefix arithmetic and the model folder's version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.common.model_folders import folder_version
from services.describer.model_prep import MANIFEST


def common_prefix_length(left: Sequence[int], right: Sequence[int]) -> int:
    """How many leading tokens ``left`` and ``right`` share."""
    length = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        length += 1
    return length


def model_version(path: Path) -> str:
    """A short content hash of the model folder: it keys caches and tells checkpoints apart."""
    return folder_version(path, manifest=MANIFEST)
