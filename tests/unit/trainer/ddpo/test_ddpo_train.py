"""One DDPO epoch on the tiny random pipeline: trajectories, re-scoring, updates of the LoRA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from services.common.contracts import Context
from services.trainer.ddpo.config import DdpoConfig, preset
from services.trainer.ddpo.logprob import ddim_step_with_logprob
from services.trainer.ddpo.rewards import InProcessReward
from services.trainer.ddpo.sampling import ddim_scheduler, guided_noise, sample_trajectories
from services.trainer.ddpo.tasks import Task
from services.trainer.ddpo.train import DdpoTrainer

PROMPTS = ["a red poster", "a blue poster", "summer sale"]
TASKS = [
    Task(key=f"t{i}", prompt=p, context=Context(account="acme")) for i, p in enumerate(PROMPTS)
]


def load(path: Path) -> Any:
    pipe = StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        path,
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def brightness(images: torch.Tensor, tasks: Sequence[Task]) -> np.ndarray:
    assert images.shape[0] == len(tasks)
    return images.mean(dim=(1, 2, 3)).numpy()


def test_trajectories_hold_every_latent_and_the_steps_re_score_identically(
    tiny_sd_dir: Path,
) -> None:
    pipe = load(tiny_sd_dir)
    drawn = sample_trajectories(
        pipe, PROMPTS[:2], steps=4, eta=1.0, guidance_scale=5.0, width=64, height=64, seeds=[1, 2]
    )
    assert drawn.latents.shape == (2, 5, 4, 8, 8)
    assert drawn.log_probs.shape == (2, 4) and drawn.images.shape == (2, 3, 64, 64)
    assert bool(torch.isfinite(drawn.log_probs).all())
    again = sample_trajectories(
        pipe, PROMPTS[:2], steps=4, eta=1.0, guidance_scale=5.0, width=64, height=64, seeds=[1, 2]
    )
    torch.testing.assert_close(again.latents, drawn.latents)  # reproducible from the seeds
    scheduler = ddim_scheduler(pipe, 4)
    for j, t in enumerate(drawn.timesteps):
        noise = guided_noise(
            pipe.unet, drawn.latents[:, j], t, drawn.prompt_embeds, drawn.negative_embeds, 5.0
        )
        step = ddim_step_with_logprob(
            scheduler, noise, t, drawn.latents[:, j], eta=1.0, prev_sample=drawn.latents[:, j + 1]
        )
        # Before any update the policy is the one that sampled: every ratio is exactly 1.
        torch.testing.assert_close(step.log_prob, drawn.log_probs[:, j])


def test_an_epoch_updates_only_the_lora_and_reports_its_statistics(tiny_sd_dir: Path) -> None:
    pipe = load(tiny_sd_dir)
    base = {name: p.detach().clone() for name, p in pipe.unet.named_parameters()}
    config = preset("tiny", learning_rate=1e-2, clip_range=1e-2)
    trainer = DdpoTrainer(pipe, config, InProcessReward(brightness))
    lora_before = [p.detach().clone() for p in trainer.parameters]

    stats = trainer.run_epoch(TASKS)

    assert stats.epoch == 1 and trainer.epoch == 1
    assert stats.optimizer_steps == 2  # 4 samples, minibatches of 2, no accumulation
    assert np.isfinite([stats.loss, stats.approx_kl, stats.reward_mean]).all()
    assert stats.reward_std > 0
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, trainer.parameters, strict=True))
    for name, parameter in pipe.unet.named_parameters():
        if "lora_" not in name:
            # peft wraps each adapted layer: its weight moves under ``base_layer``.
            original = name.replace(".base_layer.", ".")
            assert torch.equal(parameter, base[original]), name  # the base UNet stays frozen


def test_several_images_per_prompt_are_drawn_and_judged_among_siblings(
    tiny_sd_dir: Path,
) -> None:
    config = preset("tiny", images_per_prompt=2, per_prompt_min_count=2)

    def ordinal(images: torch.Tensor, tasks: Sequence[Task]) -> np.ndarray:
        return np.arange(len(tasks), dtype=np.float64)  # every image scored apart

    trainer = DdpoTrainer(load(tiny_sd_dir), config, InProcessReward(ordinal))
    drawn, rewards = trainer.sample(TASKS, np.random.default_rng(0))
    keys = [task.key for task in drawn.tasks]
    assert keys[0] == keys[1] and keys[2] == keys[3]  # two prompts, two images each
    advantages = trainer.advantages(keys, rewards)
    # Each prompt's images are standardised among themselves: mean 0 and spread 1 per prompt.
    for key in set(keys):
        mine = advantages[[k == key for k in keys]]
        assert abs(mine.mean()) < 1e-6 and mine.std() == pytest.approx(1, abs=1e-3)


def test_configurations_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="eta"):
        DdpoConfig(eta=0.0)
    with pytest.raises(ValueError, match="train_batch_size"):
        DdpoConfig(sample_batch_size=3, sample_batches=1, train_batch_size=2)
    with pytest.raises(ValueError, match="images_per_prompt"):
        DdpoConfig(sample_batch_size=8, images_per_prompt=3)
    with pytest.raises(ValueError, match="mixed_precision"):
        DdpoConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="unknown DDPO preset"):
        preset("huge")
    assert preset("cpu").trained_steps == 10


def test_a_job_samples_with_the_guidance_its_model_folder_recommends(tiny_sd_dir: Path) -> None:
    from pydantic import ValidationError

    from services.trainer.ddpo.job import BoigsdJob, config_for

    config = config_for(BoigsdJob(preset="tiny", epochs=5, seed=3), tiny_sd_dir)
    assert (config.epochs, config.seed) == (5, 3)
    (tiny_sd_dir / "boig_sampling.json").write_text('{"guidance_scale": 2.0, "steps": 25}')
    try:
        assert config_for(BoigsdJob(preset="tiny"), tiny_sd_dir).guidance_scale == 2.0
    finally:
        (tiny_sd_dir / "boig_sampling.json").unlink()
    with pytest.raises(ValidationError):
        BoigsdJob(preset="huge")


def test_evaluation_draws_the_same_images_until_the_policy_changes(tiny_sd_dir: Path) -> None:
    pipe = load(tiny_sd_dir)
    trainer = DdpoTrainer(
        pipe, preset("tiny", learning_rate=1e-1, clip_range=1.0), InProcessReward(brightness)
    )
    before = trainer.evaluate(TASKS, seeds=[7, 8])
    assert before.shape == (len(TASKS) * 2,)
    np.testing.assert_array_equal(trainer.evaluate(TASKS, seeds=[7, 8]), before)
    trainer.run_epoch(TASKS)
    assert not np.array_equal(trainer.evaluate(TASKS, seeds=[7, 8]), before)


def test_the_kl_penalty_measures_the_distance_from_the_base_model(tiny_sd_dir: Path) -> None:
    config = preset("tiny", learning_rate=1e-2, clip_range=1e-2, kl_coef=0.1)
    trainer = DdpoTrainer(load(tiny_sd_dir), config, InProcessReward(brightness))
    # Two optimizer steps an epoch: the first minibatch sees the base model itself (the LoRA
    # starts at zero: KL exactly 0), the second a moved policy (KL > 0).
    first = trainer.run_epoch(TASKS)
    second = trainer.run_epoch(TASKS)
    assert 0 < first.kl_to_base < second.kl_to_base
    assert np.isfinite([first.loss, second.loss]).all()

    off = DdpoTrainer(load(tiny_sd_dir), preset("tiny"), InProcessReward(brightness))
    assert off.run_epoch(TASKS).kl_to_base == 0.0


def test_evaluation_draws_the_images_the_generator_serves(tiny_sd_dir: Path) -> None:
    from services.trainer.ddpo.sampling import sample_images

    pipe = load(tiny_sd_dir)
    served = pipe(
        prompt=PROMPTS[:2],
        num_inference_steps=5,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
        output_type="pt",
    ).images
    judged = sample_images(
        pipe, PROMPTS[:2], steps=5, eta=0.0, guidance_scale=5.0, width=64, height=64, seeds=[3, 4]
    )
    torch.testing.assert_close(judged, served, atol=1e-5, rtol=0)
    # DDPO's own sampler (eta 1) draws other images from the same seeds.
    stochastic = sample_images(
        pipe, PROMPTS[:2], steps=5, eta=1.0, guidance_scale=5.0, width=64, height=64, seeds=[3, 4]
    )
    assert not torch.allclose(stochastic, served, atol=1e-3)


def test_a_job_judges_held_out_prompts_with_the_steps_its_model_serves(tiny_sd_dir: Path) -> None:
    from services.trainer.ddpo.job import BoigsdJob, config_for

    assert config_for(BoigsdJob(preset="tiny"), tiny_sd_dir).eval_steps == 0
    (tiny_sd_dir / "boig_sampling.json").write_text('{"guidance_scale": 2.0, "steps": 25}')
    try:
        config = config_for(BoigsdJob(preset="tiny"), tiny_sd_dir)
    finally:
        (tiny_sd_dir / "boig_sampling.json").unlink()
    assert (config.eval_steps, config.eval_eta, config.sample_steps) == (25, 0.0, 6)
