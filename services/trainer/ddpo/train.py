"""The DDPO loop: sample trajectories with the current LoRA, reward them, and take clipped
policy-gradient steps on the LoRA, epoch after epoch.

One epoch: ``sample_batches`` passes of ``sample_batch_size`` images (prompts drawn from the
training contexts), rewards standardised per prompt, then ``inner_epochs`` passes over those
trajectories in minibatches, each training a random ``timestep_fraction`` of the T steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from services.common.boigsd_lora import add_boigsd_lora
from services.trainer.ddpo.config import DdpoConfig
from services.trainer.ddpo.logprob import ddim_step_with_logprob
from services.trainer.ddpo.ppo import PerPromptAdvantages, PpoStats, ppo_loss
from services.trainer.ddpo.rewards import Reward
from services.trainer.ddpo.sampling import (
    Trajectories,
    ddim_scheduler,
    guided_noise,
    sample_trajectories,
)
from services.trainer.ddpo.tasks import Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    reward_mean: float
    reward_std: float
    loss: float
    approx_kl: float
    clip_fraction: float
    optimizer_steps: int
    seconds: float
    kl_to_base: float = 0.0
    """Mean per-value KL divergence of the trained steps from the base model's (measured only
    when ``kl_coef`` > 0, else 0)."""


class DdpoTrainer:
    """Holds the pipeline with its trainable LoRA, the optimizer and the advantage buffers."""

    def __init__(self, pipe: Any, config: DdpoConfig, reward: Reward) -> None:
        self.pipe = pipe
        self.config = config
        self._reward = reward
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        # The LoRA's initial A is drawn from the run's seed: a run is reproducible from its
        # config alone (and a resumed run equals one that never stopped).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.parameters = add_boigsd_lora(
                pipe.unet, rank=config.lora_rank, alpha=config.lora_alpha
            )
        self.optimizer = torch.optim.AdamW(
            self.parameters,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        self.advantages = PerPromptAdvantages(
            buffer_size=config.per_prompt_buffer, min_count=config.per_prompt_min_count
        )
        self.epoch = 0
        self._rng = np.random.default_rng(config.seed)

    def rng_state(self) -> dict[str, Any]:
        """The sampling RNG's state (prompts, seeds, trained steps), JSON-able."""
        return dict(self._rng.bit_generator.state)

    def restore_rng(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state

    def run_epoch(self, tasks: Sequence[Task]) -> EpochStats:
        started = time.perf_counter()
        drawn, rewards = self.sample(tasks)
        keys = [task.key for task in drawn.tasks]
        advantages = torch.as_tensor(
            self.advantages(keys, rewards), dtype=torch.float32, device=self.pipe.device
        )
        stats, kl_to_base = self.train(drawn.trajectories, advantages)
        self.epoch += 1
        result = EpochStats(
            epoch=self.epoch,
            reward_mean=float(rewards.mean()),
            reward_std=float(rewards.std()),
            loss=float(np.mean([s.loss for s in stats])),
            approx_kl=float(np.mean([s.approx_kl for s in stats])),
            clip_fraction=float(np.mean([s.clip_fraction for s in stats])),
            optimizer_steps=self._optimizer_steps(len(drawn.trajectories)),
            seconds=time.perf_counter() - started,
            kl_to_base=kl_to_base,
        )
        logger.info(
            "epoch %d: reward %.4f ± %.4f, kl %.2e, clipped %.0f%%, %.1f s",
            result.epoch,
            result.reward_mean,
            result.reward_std,
            result.approx_kl,
            100 * result.clip_fraction,
            result.seconds,
        )
        return result

    def sample(self, tasks: Sequence[Task]) -> tuple[DrawnBatch, np.ndarray]:
        """This epoch's trajectories under the current weights, and their rewards (each batch
        is scored while the next is sampled)."""
        config = self.config
        self.pipe.unet.eval()
        batches, chosen, pending = [], [], []
        for _ in range(config.sample_batches):
            prompts = config.sample_batch_size // config.images_per_prompt
            indices = self._rng.integers(0, len(tasks), prompts)
            picked = [tasks[int(i)] for i in indices for _ in range(config.images_per_prompt)]
            seeds = [int(s) for s in self._rng.integers(0, 2**31 - 1, config.sample_batch_size)]
            batch = self._draw(picked, seeds)
            pending.append(self._reward.submit(batch.images, picked))
            batches.append(batch)
            chosen.extend(picked)
        rewards = np.concatenate([future.result() for future in pending])
        return DrawnBatch(_concatenate(batches), chosen), rewards

    def train(
        self, trajectories: Trajectories, advantages: torch.Tensor
    ) -> tuple[list[PpoStats], float]:
        """The clipped policy-gradient passes over one epoch's trajectories; their stats and
        the mean KL from the base model (0 when ``kl_coef`` is 0)."""
        config = self.config
        self.pipe.unet.train()
        scheduler = ddim_scheduler(self.pipe, config.sample_steps)
        steps = len(trajectories.timesteps)
        stats: list[PpoStats] = []
        kl_values: list[float] = []
        accumulated = 0
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(config.inner_epochs):
            order = self._rng.permutation(len(trajectories))
            for start in range(0, len(order), config.train_batch_size):
                rows = torch.as_tensor(order[start : start + config.train_batch_size])
                trained = self._rng.permutation(steps)[: config.trained_steps]
                for j in trained:
                    t = trajectories.timesteps[j]
                    latents = trajectories.latents[rows, j]
                    model_input = scheduler.scale_model_input(latents, t)
                    negatives = (
                        None
                        if trajectories.negative_embeds is None
                        else trajectories.negative_embeds[rows]
                    )
                    noise = guided_noise(
                        self.pipe.unet,
                        model_input,
                        t,
                        trajectories.prompt_embeds[rows],
                        negatives,
                        config.guidance_scale,
                    )
                    step = ddim_step_with_logprob(
                        scheduler,
                        noise,
                        t,
                        latents,
                        eta=config.eta,
                        prev_sample=trajectories.latents[rows, j + 1],
                    )
                    loss, step_stats = ppo_loss(
                        step.log_prob,
                        trajectories.log_probs[rows, j],
                        advantages[rows],
                        clip_range=config.clip_range,
                        adv_clip_max=config.adv_clip_max,
                    )
                    if config.kl_coef > 0:
                        kl = self._kl_to_base(
                            scheduler, model_input, latents, t, trajectories, rows, j, step
                        )
                        loss = loss + config.kl_coef * kl
                        kl_values.append(float(kl.detach()))
                    # One optimizer step averages its minibatches and their trained steps.
                    (loss / (len(trained) * config.gradient_accumulation_steps)).backward()  # type: ignore[no-untyped-call]
                    stats.append(step_stats)
                accumulated += 1
                if accumulated % config.gradient_accumulation_steps == 0:
                    self._step()
        if accumulated % config.gradient_accumulation_steps:
            self._step()
        return stats, float(np.mean(kl_values)) if kl_values else 0.0

    def _kl_to_base(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        latents: torch.Tensor,
        t: torch.Tensor,
        trajectories: Trajectories,
        rows: torch.Tensor,
        j: int,
        step: Any,
    ) -> torch.Tensor:
        """KL(policy step || base step), per latent value, averaged over the minibatch. Both
        steps are Gaussians with the same variance (the scheduler's, not the model's), so the
        divergence is exactly (mu - mu_base)^2 / (2 sigma^2)."""
        unet = self.pipe.unet
        with torch.no_grad():
            unet.disable_adapters()
            try:
                base_noise = guided_noise(
                    unet,
                    model_input,
                    t,
                    trajectories.prompt_embeds[rows],
                    None
                    if trajectories.negative_embeds is None
                    else trajectories.negative_embeds[rows],
                    self.config.guidance_scale,
                )
            finally:
                unet.enable_adapters()
            base = ddim_step_with_logprob(
                scheduler,
                base_noise,
                t,
                latents,
                eta=self.config.eta,
                prev_sample=trajectories.latents[rows, j + 1],
            )
        kl: torch.Tensor = ((step.mean - base.mean) ** 2 / (2 * step.std**2)).mean()
        return kl

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Task], *, seeds: Sequence[int]) -> np.ndarray:
        """Rewards of images drawn for each task with each of ``seeds`` (task-major): the same
        noise every time, so the curve over training shows the policy, not the draw."""
        config = self.config
        self.pipe.unet.eval()
        picked = [task for task in tasks for _ in seeds]
        all_seeds = [seed for _ in tasks for seed in seeds]
        pending = []
        for start in range(0, len(picked), config.sample_batch_size):
            chunk = picked[start : start + config.sample_batch_size]
            batch = self._draw(chunk, all_seeds[start : start + config.sample_batch_size])
            pending.append(self._reward.submit(batch.images, chunk))
        return np.concatenate([future.result() for future in pending])

    def _draw(self, tasks: Sequence[Task], seeds: Sequence[int]) -> Trajectories:
        """One image per task under the current weights, as the config samples."""
        config = self.config
        return sample_trajectories(
            self.pipe,
            [task.prompt for task in tasks],
            steps=config.sample_steps,
            eta=config.eta,
            guidance_scale=config.guidance_scale,
            width=config.resolution,
            height=config.resolution,
            seeds=list(seeds),
        )

    def _step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _optimizer_steps(self, samples: int) -> int:
        config = self.config
        minibatches = -(-samples // config.train_batch_size) * config.inner_epochs
        return -(-minibatches // config.gradient_accumulation_steps)


@dataclass(frozen=True)
class DrawnBatch:
    trajectories: Trajectories
    tasks: list[Task]


def _concatenate(batches: list[Trajectories]) -> Trajectories:
    first = batches[0]
    negatives = [b.negative_embeds for b in batches]
    return Trajectories(
        latents=torch.cat([b.latents for b in batches]),
        log_probs=torch.cat([b.log_probs for b in batches]),
        timesteps=first.timesteps,
        prompt_embeds=torch.cat([b.prompt_embeds for b in batches]),
        negative_embeds=None
        if first.negative_embeds is None
        else torch.cat([n for n in negatives if n is not None]),
        images=torch.cat([b.images for b in batches]),
    )
