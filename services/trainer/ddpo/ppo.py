"""The clipped PPO objective on one denoising step, and per-prompt advantages.

Each step's policy ratio is ``exp(log_prob_new - log_prob_old)``; the objective keeps it near
1 (``clip_range``) so that one batch of samples cannot move the policy far, and the
advantages are clipped (``adv_clip_max``) so that an outlier reward cannot either.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PpoStats:
    loss: float
    approx_kl: float
    """Half the mean squared log-ratio: how far the step's policy moved (nats)."""
    clip_fraction: float
    """Share of samples whose ratio left [1 - clip_range, 1 + clip_range]."""


def ppo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    adv_clip_max: float,
) -> tuple[torch.Tensor, PpoStats]:
    """The loss to minimise for one step of a batch of trajectories (all tensors (B,))."""
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = PpoStats(
            loss=float(loss),
            approx_kl=float(0.5 * (log_ratio**2).mean()),
            clip_fraction=float(((ratio - 1).abs() > clip_range).float().mean()),
        )
    return loss, stats


class PerPromptAdvantages:
    """Rewards standardised per prompt against that prompt's recent rewards.

    Some prompts are easier than others; comparing an image with others of the same prompt
    rewards what the policy did, not which prompt it drew. Until a prompt has ``min_count``
    rewards in its buffer (the last ``buffer_size``), the whole batch is its reference.
    """

    def __init__(self, *, buffer_size: int, min_count: int) -> None:
        if min_count > buffer_size:
            raise ValueError(f"min_count {min_count} exceeds buffer_size {buffer_size}")
        self._buffer_size = buffer_size
        self._min_count = min_count
        self._seen: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=buffer_size))

    def __call__(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.shape != (len(prompts),):
            raise ValueError(f"{rewards.shape} rewards for {len(prompts)} prompts")
        for prompt, reward in zip(prompts, rewards, strict=True):
            self._seen[prompt].append(float(reward))
        batch_mean, batch_std = rewards.mean(), rewards.std() + 1e-6
        advantages = np.empty_like(rewards)
        for index, prompt in enumerate(prompts):
            history = np.asarray(self._seen[prompt])
            if len(history) >= self._min_count:
                mean, std = history.mean(), history.std() + 1e-6
            else:
                mean, std = batch_mean, batch_std
            advantages[index] = (rewards[index] - mean) / std
        return advantages

    def state(self) -> dict[str, list[float]]:
        """The buffers, to save with a checkpoint and resume from."""
        return {prompt: list(values) for prompt, values in self._seen.items()}

    def restore(self, state: dict[str, list[float]]) -> None:
        self._seen.clear()
        for prompt, values in state.items():
            self._seen[prompt].extend(values)
