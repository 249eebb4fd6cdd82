"""`boig`: the one command line carries the API commands and hands `ingest` to its module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import services.trainer.ingest.__main__ as ingest_main
from services.cli import app
from services.trainer.ingest.split import SplitMode


def test_the_api_commands_are_boig_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("score", "describe", "generate", "jobs", "feedback", "ingest", "checkpoints"):
        assert f" {command} " in result.stdout


def test_boig_ingest_hands_its_arguments_to_the_ingest_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def stop_at_ingest(data_file: Path, **options: Any) -> None:
        seen.update(options, data_file=data_file)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(ingest_main, "ingest_over_http", stop_at_ingest)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("")
    arguments = [str(rows), "--out", str(tmp_path / "data"), "--split", "random", "--seed", "7"]
    result = CliRunner().invoke(app, ["ingest", *arguments])
    assert result.exit_code == 1
    assert "ingestion failed: stopped by the test" in result.output
    assert seen["data_file"] == rows and seen["out"] == tmp_path / "data"
    assert seen["split_mode"] is SplitMode.RANDOM and seen["seed"] == 7

    shown = CliRunner().invoke(app, ["ingest", "--help"])
    assert shown.exit_code == 0 and "--featurizer-url" in shown.stdout
    assert "boig ingest" in shown.stdout
