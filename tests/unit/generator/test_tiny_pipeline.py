"""The tiny random pipeline: SD 1.x's layout and CLIP's real tokenizer, safetensors only,
built once, atomically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common import clip_tokenizer
from services.common.checkpoints import ALLOWED_SUFFIXES
from services.common.settings import default_tiny_pipeline_dir
from services.generator.tiny_pipeline import build_tiny_pipeline, prepare_tiny_pipeline

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_is_an_sd_pipeline_of_safetensors_and_json(tiny_sd_dir: Path) -> None:
    assert (tiny_sd_dir / "model_index.json").is_file()
    for component in COMPONENTS:
        assert (tiny_sd_dir / component).is_dir(), component
    weights = [path.relative_to(tiny_sd_dir).as_posix() for path in tiny_sd_dir.rglob("*.*")]
    assert "unet/diffusion_pytorch_model.safetensors" in weights
    assert "vae/diffusion_pytorch_model.safetensors" in weights
    assert "text_encoder/model.safetensors" in weights
    suffixes = {path.suffix for path in _files(tiny_sd_dir)}
    assert suffixes <= {".safetensors", ".json", ".txt", ".md"}
    assert suffixes <= ALLOWED_SUFFIXES  # publishable as is: nothing pickled
    assert "random" in (tiny_sd_dir / "README.md").read_text()
    # the staging folder was renamed, not left beside it
    assert [path.name for path in tiny_sd_dir.parent.iterdir()] == [tiny_sd_dir.name]


def test_a_second_prepare_returns_without_rebuilding(tiny_sd_dir: Path) -> None:
    before = {path: path.stat().st_mtime_ns for path in _files(tiny_sd_dir)}
    assert prepare_tiny_pipeline(tiny_sd_dir) == tiny_sd_dir
    assert {path: path.stat().st_mtime_ns for path in _files(tiny_sd_dir)} == before


def test_default_folder_is_under_boig_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOIG_HOME", str(tmp_path))
    assert default_tiny_pipeline_dir() == tmp_path / "models" / "tiny-sd"


def test_the_tokenizer_is_clips_real_bpe(tiny_sd_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as in SD 1.5's tokenizer
    ids = tokenizer("a red circle on a white background").input_ids
    # OpenAI CLIP's ids: "a</w>" 320, "red</w>" 736, "circle</w>" 7117, ...
    assert ids == [49406, 320, 736, 7117, 525, 320, 1579, 5994, 49407]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle on a white background"
    padded = tokenizer("circle", padding="max_length", max_length=77).input_ids
    assert padded[:3] == [49406, 7117, 49407] and set(padded[3:]) == {49407}
    assert len(tokenizer("unpronounceablewordzz").input_ids) > 3  # rare words split


def test_the_text_encoder_matches_the_tokenizer(tiny_sd_dir: Path) -> None:
    import json

    config = json.loads((tiny_sd_dir / "text_encoder" / "config.json").read_text())
    assert config["vocab_size"] == 49408
    assert config["max_position_embeddings"] == 77
    assert config["eos_token_id"] == 49407  # pooled output reads the first end token
    unet = json.loads((tiny_sd_dir / "unet" / "config.json").read_text())
    assert unet["cross_attention_dim"] == config["hidden_size"]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, tiny_sd_dir: Path) -> None:
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert _sha256(again / weights) == _sha256(tiny_sd_dir / weights)
    assert _sha256(other / weights) != _sha256(tiny_sd_dir / weights)


def test_a_folder_another_builder_finished_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "tiny-sd"
    out.mkdir()
    (out / "model_index.json").write_text("{}")
    (out / "theirs.txt").write_text("finished first")

    assert build_tiny_pipeline(out) == out
    assert sorted(path.name for path in out.iterdir()) == ["model_index.json", "theirs.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["tiny-sd"]  # no staging left


def test_the_bpe_file_is_found_without_importing_open_clip() -> None:
    import sys

    had_open_clip = "open_clip" in sys.modules
    path = clip_tokenizer.clip_bpe_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.is_file()
    assert ("open_clip" in sys.modules) == had_open_clip
