"""A DDIM step that is also a policy: the next latent and its log-probability.

With ``eta`` > 0, DDIM's step from ``x_t`` draws ``x_{t-1}`` from a Gaussian whose mean is
fixed by the UNet's prediction and whose standard deviation is ``eta`` times the DDPM
posterior's. DDPO needs the log-density of that draw, under the parameters that drew it and
again under the parameters being trained, so the step is written out here rather than taken
from ``DDIMScheduler.step``, which returns only the sample. Given the same noise, the sample
is the scheduler's own (a unit test holds the two together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class PolicyStep:
    prev_sample: torch.Tensor
    """``x_{t-1}``: drawn, or the one passed in to be scored."""
    log_prob: torch.Tensor
    """Per sample: the Gaussian log-density of ``prev_sample``, averaged over its elements
    (as public DDPO code does: the PPO ratio then does not grow with the latent size)."""
    mean: torch.Tensor
    std: torch.Tensor


def ddim_step_with_logprob(
    scheduler: Any,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    *,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> PolicyStep:
    """One DDIM step from ``sample`` (``x_t``) with ``model_output`` (the guided prediction).

    Without ``prev_sample`` a new ``x_{t-1}`` is drawn (from ``generator``); with it, that
    latent is scored instead, which is how the trainer re-evaluates a stored trajectory under
    the current weights. ``eta`` must be > 0: a deterministic step has no density.
    """
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a step with a log-probability, got {eta}")
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps() first")
    config = scheduler.config
    t = int(timestep)
    prev_t = t - config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod.to(device=sample.device, dtype=torch.float32)
    alpha_t = alphas[t]
    alpha_prev = alphas[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod.to(alpha_t)
    beta_t = 1 - alpha_t

    x = sample.float()
    out = model_output.float()
    if config.prediction_type == "epsilon":
        x0 = (x - beta_t.sqrt() * out) / alpha_t.sqrt()
        eps = out
    elif config.prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * x - beta_t.sqrt() * out
        eps = alpha_t.sqrt() * out + beta_t.sqrt() * x
    elif config.prediction_type == "sample":
        x0 = out
        eps = (x - alpha_t.sqrt() * x0) / beta_t.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {config.prediction_type!r}")
    if config.thresholding:
        raise ValueError("dynamic thresholding is not supported by the policy step")
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        # The direction must point at the clipped x0, as DDIMScheduler does.
        eps = (x - alpha_t.sqrt() * x0) / beta_t.sqrt()

    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.clamp(min=0).sqrt()
    direction = (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps
    mean = alpha_prev.sqrt() * x0 + direction
    if prev_sample is None:
        noise = _noise(x.shape, generator, device=x.device)
        prev = mean + std * noise
    else:
        prev = prev_sample.float()
    log_prob = (-((prev.detach() - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI).mean(
        dim=tuple(range(1, x.ndim))
    )
    return PolicyStep(prev_sample=prev.to(sample.dtype), log_prob=log_prob, mean=mean, std=std)


def _noise(
    shape: torch.Size,
    generator: torch.Generator | list[torch.Generator] | None,
    *,
    device: torch.device,
) -> torch.Tensor:
    # Drawn on the CPU from per-image generators, as the generator service draws its latents:
    # reproducible from the seeds whatever the device.
    if isinstance(generator, list):
        return torch.stack(
            [torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generator]
        ).to(device)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
