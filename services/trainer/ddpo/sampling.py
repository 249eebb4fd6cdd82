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


@dataclass(frozen=True)
class _Chain:
    """What every denoising chain of a batch starts from: the scheduler, the encoded prompts,
    one CPU generator per image and x_T."""

    pipe: Any
    scheduler: Any
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    guidance_scale: float
    generators: list[torch.Generator]
    start: torch.Tensor

    @classmethod
    def begin(
        cls,
        pipe: Any,
        prompts: list[str],
        steps: int,
        guidance_scale: float,
        width: int,
        height: int,
        seeds: list[int],
        negative_prompt: str | None,
    ) -> _Chain:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        scheduler = ddim_scheduler(pipe, steps)
        prompt_embeds, negative_embeds = encode_prompts(
            pipe, prompts, negative_prompt=negative_prompt, guidance_scale=guidance_scale
        )
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        # x_T drawn on the CPU, one generator per image, as the diffusers pipeline draws it.
        scale = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, height // scale, width // scale)
        start = torch.stack(
            [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
        ).to(pipe.device, dtype=pipe.unet.dtype)
        return cls(
            pipe,
            scheduler,
            prompt_embeds,
            negative_embeds,
            guidance_scale,
            generators,
            start * scheduler.init_noise_sigma,
        )

    def noise(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_noise(
            self.pipe.unet,
            self.scheduler.scale_model_input(latents, t),
            t,
            self.prompt_embeds,
            self.negative_embeds,
            self.guidance_scale,
        )


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
    chain = _Chain.begin(
        pipe, prompts, steps, guidance_scale, width, height, seeds, negative_prompt
    )
    return _trajectories(chain, eta)


def _trajectories(chain: _Chain, eta: float) -> Trajectories:
    scheduler, latents = chain.scheduler, chain.start
    kept, log_probs = [latents], []
    for t in scheduler.timesteps:
        step = ddim_step_with_logprob(
            scheduler, chain.noise(latents, t), t, latents, eta=eta, generator=chain.generators
        )
        latents = step.prev_sample
        kept.append(latents)
        log_probs.append(step.log_prob)
    return Trajectories(
        latents=torch.stack(kept, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        timesteps=scheduler.timesteps.clone(),
        prompt_embeds=chain.prompt_embeds,
        negative_embeds=chain.negative_embeds,
        images=_decode(chain.pipe, latents),
    )


@torch.no_grad()
def sample_images(
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
) -> torch.Tensor:
    """Images only, (B, 3, H, W) in [0, 1]. With ``eta`` 0 they are what the generator serves
    for the same seeds (the pipeline's DDIM, no noise after the first latents), which is what
    held-out evaluation must judge; with ``eta`` > 0, DDPO's own sampler draws them."""
    chain = _Chain.begin(
        pipe, prompts, steps, guidance_scale, width, height, seeds, negative_prompt
    )
    if eta > 0:
        return _trajectories(chain, eta).images
    latents = chain.start
    for t in chain.scheduler.timesteps:
        latents = chain.scheduler.step(chain.noise(latents, t), t, latents, eta=0.0).prev_sample
    return _decode(pipe, latents)


def _decode(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    decoded: torch.Tensor = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (decoded.float() / 2 + 0.5).clamp(0, 1)
