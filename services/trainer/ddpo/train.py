"""The DDPO loop: sample trajectories with the current LoRA, reward them, and take clipped
policy-gradient steps on the LoRA, epoch after epoch.

One epoch: ``sample_batches`` passes of ``sample_batch_size`` images (prompts drawn from the
training contexts), rewards standardised per prompt, then ``inner_epochs`` passes over those
trajectories in minibatches, each training a random ``timestep_fraction`` of the T steps.

The loop runs under an ``accelerate.Accelerator``: one process on a CPU or a GPU, or one per
GPU when launched with ``torch.distributed.run`` (``services.trainer.ddpo.launch``). Each
process samples its own share of the epoch from its own random stream; the rewards of all
processes are gathered, so every process standardises them against the same buffers; the
gradients of the LoRA are averaged across processes once per optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from services.common.boigsd_lora import LORA_TARGETS, add_boigsd_lora
from services.trainer.ddpo.config import DdpoConfig
from services.trainer.ddpo.logprob import ddim_step_with_logprob
from services.trainer.ddpo.ppo import PerPromptAdvantages, PpoStats, ppo_loss
from services.trainer.ddpo.rewards import Reward
from services.trainer.ddpo.sampling import (
    Trajectories,
    ddim_scheduler,
    guided_noise,
    sample_images,
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
    images: int = 0
    """Images the epoch judged, over every process (0 in rows logged before it was kept)."""


def make_accelerator(config: DdpoConfig, device: torch.device | str) -> Accelerator:
    """The run's Accelerator: under ``torch.distributed.run`` one process per GPU (NCCL) or
    CPU process (gloo), else this process alone on ``device``."""
    return Accelerator(
        cpu=torch.device(device).type == "cpu", mixed_precision=config.mixed_precision
    )


class DdpoTrainer:
    """Holds the pipeline with its trainable LoRA, the optimizer and the advantage buffers."""

    def __init__(
        self,
        pipe: Any,
        config: DdpoConfig,
        reward: Reward,
        *,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.pipe = pipe
        self.config = config
        self._reward = reward
        self.accelerator = accelerator or make_accelerator(config, pipe.device)
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        # The LoRA's initial A is drawn from the run's seed: a run is reproducible from its
        # config alone (and a resumed run equals one that never stopped), and every process
        # starts from the same weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.parameters = add_boigsd_lora(
                pipe.unet,
                rank=config.lora_rank,
                alpha=config.lora_alpha,
                target_modules=LORA_TARGETS[config.lora_targets],
            )
        optimizer = torch.optim.AdamW(
            self.parameters,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        # Training forwards go through the prepared UNet (DistributedDataParallel across
        # processes, autocast under mixed precision); sampling uses the pipeline's own, which
        # shares its weights.
        self._trained_unet, self.optimizer = self.accelerator.prepare(pipe.unet, optimizer)
        self.advantages = PerPromptAdvantages(
            buffer_size=config.per_prompt_buffer, min_count=config.per_prompt_min_count
        )
        self.epoch = 0

    @property
    def is_main_process(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def _epoch_rng(self) -> np.random.Generator:
        # A function of (seed, epoch, process) alone: a resumed run draws what the one that
        # never stopped drew, with no generator state to checkpoint, and processes differ.
        return np.random.default_rng([self.config.seed, self.epoch, self.accelerator.process_index])

    def run_epoch(self, tasks: Sequence[Task]) -> EpochStats:
        started = time.perf_counter()
        rng = self._epoch_rng()
        drawn, local_rewards = self.sample(tasks, rng)
        index = {task.key: i for i, task in enumerate(tasks)}
        device = self.accelerator.device
        # Every process's rewards, in process order: the same advantages (and buffers) on
        # every process, each training on its own slice.
        rewards = self._gather(torch.as_tensor(local_rewards, dtype=torch.float64, device=device))
        drawn_tasks = self._gather(
            torch.as_tensor([index[t.key] for t in drawn.tasks], dtype=torch.int64, device=device)
        )
        keys = [tasks[int(i)].key for i in drawn_tasks]
        advantages = self.advantages(keys, rewards)
        mine = len(local_rewards) * self.accelerator.process_index
        local_advantages = torch.as_tensor(
            advantages[mine : mine + len(local_rewards)], dtype=torch.float32, device=device
        )
        stats, kl_to_base = self.train(drawn.trajectories, local_advantages, rng)
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
            images=len(rewards),
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

    def _gather(self, values: torch.Tensor) -> np.ndarray:
        gathered: torch.Tensor = self.accelerator.gather(values)
        return gathered.cpu().numpy()

    def sample(
        self, tasks: Sequence[Task], rng: np.random.Generator
    ) -> tuple[DrawnBatch, np.ndarray]:
        """This process's trajectories of the epoch under the current weights, and their
        rewards (each batch is scored while the next is sampled)."""
        config = self.config
        self.pipe.unet.eval()
        batches, chosen, pending = [], [], []
        for _ in range(config.sample_batches):
            prompts = config.sample_batch_size // config.images_per_prompt
            indices = rng.integers(0, len(tasks), prompts)
            picked = [tasks[int(i)] for i in indices for _ in range(config.images_per_prompt)]
            seeds = [int(s) for s in rng.integers(0, 2**31 - 1, config.sample_batch_size)]
            batch = self._draw(picked, seeds)
            pending.append(self._reward.submit(batch.images, picked))
            batches.append(batch)
            chosen.extend(picked)
        rewards = np.concatenate([future.result() for future in pending])
        return DrawnBatch(_concatenate(batches), chosen), rewards

    def train(
        self, trajectories: Trajectories, advantages: torch.Tensor, rng: np.random.Generator
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
        minibatches = -(-len(trajectories) // config.train_batch_size) * config.inner_epochs
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(config.inner_epochs):
            order = rng.permutation(len(trajectories))
            for start in range(0, len(order), config.train_batch_size):
                rows = torch.as_tensor(order[start : start + config.train_batch_size])
                trained = rng.permutation(steps)[: config.trained_steps]
                steps_after = (accumulated + 1) % config.gradient_accumulation_steps == 0 or (
                    accumulated + 1 == minibatches
                )
                for n, j in enumerate(trained):
                    t = trajectories.timesteps[j]
                    latents = trajectories.latents[rows, j]
                    model_input = scheduler.scale_model_input(latents, t)
                    negatives = (
                        None
                        if trajectories.negative_embeds is None
                        else trajectories.negative_embeds[rows]
                    )
                    noise = guided_noise(
                        self._trained_unet,
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
                    # One optimizer step averages its minibatches and their trained steps;
                    # processes average their gradients once, at the step's last backward.
                    with self._gradient_sync(steps_after and n == len(trained) - 1):
                        self.accelerator.backward(
                            loss / (len(trained) * config.gradient_accumulation_steps)
                        )
                    stats.append(step_stats)
                accumulated += 1
                if steps_after:
                    self._step()
        return stats, float(np.mean(kl_values)) if kl_values else 0.0

    @contextlib.contextmanager
    def _gradient_sync(self, sync: bool) -> Iterator[None]:
        if sync:
            yield
        else:
            with self.accelerator.no_sync(self._trained_unet):
                yield

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
        """Rewards of images drawn for each task with each of ``seeds`` (task-major), as the
        config's ``eval_eta`` and ``eval_steps`` draw them (by default as the generator serves):
        the same noise every time, so the curve over training shows the policy, not the draw.
        The images are shared out between processes; every process gets all the rewards."""
        config = self.config
        self.pipe.unet.eval()
        work = [(task, seed) for task in tasks for seed in seeds]
        with self.accelerator.split_between_processes(work) as share:
            pending = []
            for start in range(0, len(share), config.sample_batch_size):
                chunk = share[start : start + config.sample_batch_size]
                picked = [task for task, _ in chunk]
                images = sample_images(
                    self.pipe,
                    [task.prompt for task in picked],
                    steps=config.eval_steps or config.sample_steps,
                    eta=config.eval_eta,
                    guidance_scale=config.guidance_scale,
                    width=config.resolution,
                    height=config.resolution,
                    seeds=[seed for _, seed in chunk],
                )
                pending.append(self._reward.submit(images, picked))
            mine = [float(value) for future in pending for value in future.result()]
        return np.asarray(gather_object(mine), dtype=np.float64)

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
        self.accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
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
