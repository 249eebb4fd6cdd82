"""The world SD training loop on a tiny config: it trains, resumes exactly, refuses a changed
config, and its folder loads through the generator's ImagePipeline with and without a LoRA."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from services.generator.pipeline import ImagePipeline, ImageRequest
from services.trainer.world_sd.config import tiny_preset
from services.trainer.world_sd.data import CaptionedImage
from services.trainer.world_sd.train import METRICS_FILE, StageReport, train_world_sd


class Interrupted(Exception):
    pass


def _weights(pipeline_dir: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for part in ("unet", "vae", "text_encoder"):
        for key, value in load_file(str(_safetensors_in(pipeline_dir / part))).items():
            weights[f"{part}.{key}"] = value
    return weights


def _safetensors_in(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


def test_one_run_writes_a_pipeline_folder_and_its_metrics(
    creatives: list[CaptionedImage], tmp_path: Path
) -> None:
    config = tiny_preset().model_copy(update={"sample_every": 3})
    result = train_world_sd(creatives, tmp_path / "run", config, probe_images=creatives)

    folder = result.pipeline_dir
    assert (folder / "model_index.json").is_file()
    assert {p.name for p in folder.iterdir()} >= {
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "boig_sampling.json",
    }
    assert not list(folder.rglob("*.bin")), "weights must be safetensors only"
    records = [
        json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()
    ]
    stages = [(r["stage"], r["step"]) for r in records]
    assert stages == [
        ("vae", 1),
        ("vae", 2),
        ("probe", 0),
        ("unet", 1),
        ("unet", 2),
        ("probe", 3),
        ("unet", 3),
    ]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert 0 <= records[2]["background_rgb_distance"] <= 442
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    assert scheduler["rescale_betas_zero_snr"] is True
    assert scheduler["timestep_spacing"] == "trailing"
    # A finished run is reused, not trained again.
    again = train_world_sd(creatives, tmp_path / "run", config)
    assert again.pipeline_dir == folder and again.seconds == {}


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    creatives: list[CaptionedImage], tmp_path: Path
) -> None:
    config = tiny_preset()
    whole = train_world_sd(creatives, tmp_path / "whole", config)

    def stop_in_the_unet_stage(report: StageReport) -> None:
        if (report.stage, report.step) == ("unet", 2):
            raise Interrupted

    with pytest.raises(Interrupted):
        train_world_sd(creatives, tmp_path / "split", config, progress=stop_in_the_unet_stage)
    assert not (tmp_path / "split" / "pipeline").exists()
    resumed = train_world_sd(creatives, tmp_path / "split", config)

    expected, actual = _weights(whole.pipeline_dir), _weights(resumed.pipeline_dir)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)

    # The log holds every step exactly once, as the uninterrupted run's does.
    def steps(run: Path) -> list[tuple[str, int]]:
        lines = (run / METRICS_FILE).read_text().splitlines()
        return [(json.loads(x)["stage"], json.loads(x)["step"]) for x in lines]

    assert steps(tmp_path / "split") == steps(tmp_path / "whole")


def test_a_run_folder_refuses_other_settings(
    creatives: list[CaptionedImage], tmp_path: Path
) -> None:
    config = tiny_preset().model_copy(update={"unet_steps": 2})

    def stop(report: StageReport) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        train_world_sd(creatives, tmp_path / "run", config, progress=stop)
    with pytest.raises(ValueError, match="learning_rate"):
        train_world_sd(
            creatives, tmp_path / "run", config.model_copy(update={"learning_rate": 0.5})
        )


def test_the_folder_serves_through_the_generator_with_and_without_a_lora(
    creatives: list[CaptionedImage],
    tmp_path: Path,
    make_boigsd_lora: Callable[[Path, Path, int], Path],
) -> None:
    folder = train_world_sd(creatives, tmp_path / "run", tiny_preset()).pipeline_dir
    pipeline = ImagePipeline(folder)
    assert pipeline.native_size == (32, 32)
    assert pipeline.sampling.guidance_scale == 2.0 and pipeline.sampling.steps == 2
    request = ImageRequest(
        prompt="mostly red background",
        negative_prompt=None,
        width=32,
        height=32,
        steps=2,
        guidance_scale=2.0,
        seed=3,
        count=2,
    )
    base = [np.asarray(image) for image in pipeline.generate(request)]
    assert [image.shape for image in base] == [(32, 32, 3), (32, 32, 3)]
    assert np.array_equal(base[0], np.asarray(pipeline.generate(request)[0]))

    pipeline.load_lora(make_boigsd_lora(folder, tmp_path / "lora", 1), "v1")
    with_lora = np.asarray(pipeline.generate(request)[0])
    assert not np.array_equal(with_lora, base[0])
    pipeline.unload_lora()
    assert np.array_equal(np.asarray(pipeline.generate(request)[0]), base[0])


def test_fine_tuning_keeps_the_base_autoencoder_and_text_encoder(
    creatives: list[CaptionedImage], tmp_path: Path
) -> None:
    from services.generator.tiny_pipeline import prepare_tiny_pipeline

    base = prepare_tiny_pipeline(tmp_path / "tiny-sd")  # epsilon, SD's schedule, 64 px
    config = tiny_preset().model_copy(
        update={
            "base_model": base,
            "resolution": 64,
            "prediction_type": "epsilon",
            "zero_terminal_snr": False,
            "train_text_encoder": False,
        }
    )
    tuned = train_world_sd(creatives, tmp_path / "run", config).pipeline_dir

    before, after = _weights(base), _weights(tuned)
    for key in before:
        if key.startswith(("vae.", "text_encoder.")):
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("unet."))
    vae_config = json.loads((tuned / "vae" / "config.json").read_text())
    base_config = json.loads((base / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == base_config["scaling_factor"]
    assert ImagePipeline(tuned).native_size == (64, 64)

    with pytest.raises(ValueError, match="predicts epsilon"):
        train_world_sd(
            creatives,
            tmp_path / "other",
            config.model_copy(update={"prediction_type": "v_prediction"}),
        )
