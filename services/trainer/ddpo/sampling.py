"""Sampling trajectories for DDPO: every latent of the chain and each step's log-probability.

The guided noise prediction (``guided_noise``) is one function used both to sample and to
re-score a stored step while training, so the two compute exactly the same policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler

from services.trainer.ddpo.logprob import ddim_step_with_logprob


@dataclass(frozen=True)
class Trajectories:
    """A batch of denoising chains, one per image (all tensors on the sampling device)."""

    latents: torch.Tensor
    """(B, T + 1, C, h, w): x_T first, the final latent last."""
    log_probs: torch.Tensor
    """(B, T): log-probability of each step under the weights that drew it."""
    timesteps: torch.Tensor
    """(T,): the scheduler's timestep of each step."""
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    """None without classifier-free guidance."""
    images: torch.Tensor
    """(B, 3, H, W) in [0, 1]: what the reward sees."""

    def __len__(self) -> int:
        return int(self.latents.shape[0])


def ddim_scheduler(pipe: Any, steps: int) -> Any:
    """A DDIM scheduler of the pipeline's noise schedule, separate from the pipeline's own
    (whose per-call state the generator service uses). Typed Any: diffusers' schedulers
    set their attributes through register_to_config, which type checkers cannot see."""
    scheduler: Any = DDIMScheduler.from_config(pipe.scheduler.config)  # type: ignore[no-untyped-call]
    scheduler.set_timesteps(steps)
    return scheduler


def encode_prompts(
    pipe: Any, prompts: list[str], *, negative_prompt: str | None, guidance_scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(
            prompts,
            pipe.device,
            1,
            guidance_scale > 1.0,
            [negative_prompt or ""] * len(prompts),
        )
    return positive, negative if guidance_scale > 1.0 else None


def guided_noise(
    unet: Any,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """The UNet's noise prediction with classifier-free guidance (one batched forward)."""
    if negative_embeds is None:
        prediction: torch.Tensor = unet(
            latents, timestep, encoder_hidden_states=prompt_embeds
        ).sample
        return prediction
    both = unet(
        torch.cat([latents, latents]),
        timestep,
        encoder_hidden_states=torch.cat([negative_embeds, prompt_embeds]),
    ).sample
    unconditional, conditional = both.chunk(2)
    guided: torch.Tensor = unconditional + guidance_scale * (conditional - unconditional)
    return guided


@torch.no_grad()
def sample_trajectories(
    pipe: Any,
    prompts: list[str],
    *,
    steps: int,
    eta: float,
    guidance_scale: float,
    width: int,
    height: int,
    seeds: list[int],
    negative_prompt: str | None = None,
) -> Trajectories:
    """One image per prompt, drawn from per-image CPU generators seeded ``seeds[i]``."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    scheduler = ddim_scheduler(pipe, steps)
    prompt_embeds, negative_embeds = encode_prompts(
        pipe, prompts, negative_prompt=negative_prompt, guidance_scale=guidance_scale
    )
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    scale = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, height // scale, width // scale)
    latents = torch.stack(
        [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    ).to(pipe.device, dtype=pipe.unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    chain, log_probs = [latents], []
    for t in scheduler.timesteps:
        noise = guided_noise(
            pipe.unet,
            scheduler.scale_model_input(latents, t),
            t,
            prompt_embeds,
            negative_embeds,
            guidance_scale,
        )
        step = ddim_step_with_logprob(scheduler, noise, t, latents, eta=eta, generator=generators)
        latents = step.prev_sample
        chain.append(latents)
        log_probs.append(step.log_prob)
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return Trajectories(
        latents=torch.stack(chain, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        timesteps=scheduler.timesteps.clone(),
        prompt_embeds=prompt_embeds,
        negative_embeds=negative_embeds,
        images=(decoded.float() / 2 + 0.5).clamp(0, 1),
    )
