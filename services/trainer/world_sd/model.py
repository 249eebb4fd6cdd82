"""The world SD's components in Stable Diffusion 1.x's layout (AutoencoderKL, CLIP text encoder
with the real CLIP tokenizer, UNet2DConditionModel, DDIM), built from a config or loaded from
a diffusers folder, and saved as an ordinary ``StableDiffusionPipeline`` folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from services.common.clip_tokenizer import (
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    clip_bpe_path,
    write_clip_tokenizer,
)
from services.common.model_folders import SamplingDefaults, write_sampling_defaults
from services.trainer.world_sd.config import WorldSdConfig

NORM_GROUPS = 8

# SD 1.5's training noise schedule, optionally rescaled to zero terminal SNR.
_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
}


@dataclass
class WorldSdComponents:
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    noise_scheduler: Any
    """The training-time (DDPM) view of the schedule: add_noise and get_velocity."""


def load_or_build_tokenizer(folder: Path) -> Any:
    """CLIP's tokenizer, written to ``folder`` from open-clip-torch's BPE file once."""
    if (folder / "tokenizer_config.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder))
    return write_clip_tokenizer(folder, clip_bpe_path())


def build_vae(config: WorldSdConfig) -> Any:
    blocks = len(config.vae_channels)
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=NORM_GROUPS,
    )


def build_text_encoder(config: WorldSdConfig) -> Any:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=config.text_hidden_size,
            intermediate_size=4 * config.text_hidden_size,
            projection_dim=config.text_hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=CLIP_VOCAB_SIZE - 2,
            eos_token_id=CLIP_VOCAB_SIZE - 1,
            pad_token_id=CLIP_VOCAB_SIZE - 1,
        )
    )


def build_unet(config: WorldSdConfig) -> Any:
    levels = len(config.unet_channels)
    attention = config.unet_attention_levels
    down = ("CrossAttnDownBlock2D",) * attention + ("DownBlock2D",) * (levels - attention)
    up = ("UpBlock2D",) * (levels - attention) + ("CrossAttnUpBlock2D",) * attention
    return UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        layers_per_block=config.unet_layers_per_block,
        block_out_channels=config.unet_channels,
        down_block_types=down,
        up_block_types=up,
        # Cross-attention in the middle block too: at the coarsest latents it costs little
        # and lets the whole layout read the prompt.
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.attention_heads,
        norm_num_groups=NORM_GROUPS,
    )


def noise_schedule(config: WorldSdConfig) -> Any:
    return DDPMScheduler(  # type: ignore[no-untyped-call]
        **_SCHEDULE,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.zero_terminal_snr,
    )


def sampling_scheduler(config: WorldSdConfig) -> Any:
    """DDIM over the training schedule; with zero terminal SNR it must start at the last
    timestep ('trailing' spacing), where the model learnt to draw from pure noise."""
    return DDIMScheduler(  # type: ignore[no-untyped-call]
        **_SCHEDULE,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.zero_terminal_snr,
        timestep_spacing="trailing" if config.zero_terminal_snr else "leading",
        set_alpha_to_one=False,
        steps_offset=1,  # unused by "trailing" spacing; 1 keeps diffusers from warning
    )


def build_components(config: WorldSdConfig, tokenizer_dir: Path) -> WorldSdComponents:
    """Fresh random components from ``config`` (the tokenizer is written to ``tokenizer_dir``
    once and reused)."""
    tokenizer = load_or_build_tokenizer(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = build_vae(config)
        text_encoder = build_text_encoder(config)
        unet = build_unet(config)
    return WorldSdComponents(vae, text_encoder, tokenizer, unet, noise_schedule(config))


def load_components(config: WorldSdConfig) -> WorldSdComponents:
    """The components of ``config.base_model``, to fine-tune; refuses a folder whose noise
    schedule differs from the config's (the UNet would learn another target)."""
    folder = config.base_model
    if folder is None:
        raise ValueError("config.base_model is not set")
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    prediction = scheduler.get("prediction_type", "epsilon")
    zero_snr = bool(scheduler.get("rescale_betas_zero_snr", False))
    if (prediction, zero_snr) != (config.prediction_type, config.zero_terminal_snr):
        raise ValueError(
            f"{folder} predicts {prediction} (zero terminal SNR: {zero_snr}); set "
            "prediction_type and zero_terminal_snr to match"
        )
    kwargs: dict[str, Any] = {"local_files_only": True}
    return WorldSdComponents(
        vae=AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kwargs),  # type: ignore[no-untyped-call]
        text_encoder=CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", **kwargs),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer", **kwargs),
        unet=UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", **kwargs),  # type: ignore[no-untyped-call]
        noise_scheduler=noise_schedule(config),
    )


def assemble_pipeline(components: WorldSdComponents, config: WorldSdConfig) -> Any:
    """A StableDiffusionPipeline over the components (in memory: nothing is copied), with
    the sampling scheduler."""
    pipeline: Any = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=sampling_scheduler(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_pipeline(components: WorldSdComponents, config: WorldSdConfig, folder: Path) -> None:
    """An ordinary diffusers StableDiffusionPipeline folder (safetensors) plus the recommended
    sampling settings: what ``ImagePipeline`` loads, with or without a BoigSD LoRA."""
    pipeline = assemble_pipeline(components, config)
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    write_sampling_defaults(
        folder, SamplingDefaults(guidance_scale=config.guidance_scale, steps=config.sample_steps)
    )
