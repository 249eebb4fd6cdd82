"""A pipeline folder's recommended sampling settings: read, written, and refused when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.model_folders import (
    SAMPLING_FILE,
    SamplingDefaults,
    read_sampling_defaults,
    write_sampling_defaults,
)


def test_a_folder_without_the_file_recommends_nothing(tmp_path: Path) -> None:
    assert read_sampling_defaults(tmp_path) == SamplingDefaults()


def test_written_defaults_read_back(tmp_path: Path) -> None:
    write_sampling_defaults(tmp_path, SamplingDefaults(guidance_scale=2.0, steps=25))
    assert read_sampling_defaults(tmp_path) == SamplingDefaults(guidance_scale=2.0, steps=25)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"guidance_scale": -1}', "guidance_scale"),
        ('{"guidance_scale": "high"}', "guidance_scale"),
        ('{"steps": 0}', "steps"),
        ('{"steps": 2.5}', "steps"),
    ],
)
def test_malformed_defaults_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / SAMPLING_FILE).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_sampling_defaults(tmp_path)
