"""Build the tiny random Stable Diffusion 1.x pipeline that tests and the embedded demo run on:
the real SD layout and CLIP tokenizer, with ~2.6 M random weights that draw noise-like images
in a fraction of a second on a CPU. ``python -m services.generator.tiny_pipeline --out DIR``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from services.common.clip_tokenizer import (
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    clip_bpe_path,
    write_clip_tokenizer,
)
from services.common.settings import default_tiny_pipeline_dir
from services.common.staged_folders import staged_folder

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
# 4 VAE blocks give SD's 8x downsampling, so 64x64 images denoise as 8x8 latents, as 512x512
# images do as 64x64 ones in SD 1.5. Channels are as small as GroupNorm(8) allows.
_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
}
_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 37,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "bos_token_id": CLIP_VOCAB_SIZE - 2,
    "eos_token_id": CLIP_VOCAB_SIZE - 1,
    "pad_token_id": CLIP_VOCAB_SIZE - 1,
}
# SD 1.5's training noise schedule; DDIM with eta 0 draws no noise after the first latents.
_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

_README = """# tiny-sd: a random Stable Diffusion 1.x pipeline

Built by `services.generator.tiny_pipeline` (torch seed {seed}) for tests and the embedded
demo. The weights are **random**: the layout (UNet, VAE, CLIP text encoder, DDIM scheduler)
and the tokenizer (OpenAI CLIP's BPE, from open-clip-torch) are Stable Diffusion 1.x's, so
every code path runs, but the images are noise-like patterns, not pictures.

Point `BOIG_GENERATOR_MODEL_PATH` at a real SD 1.5 / SD-Turbo diffusers folder for images.

Built with: {versions}
"""


def is_prepared(out_dir: Path) -> bool:
    """A folder counts as built once ``model_index.json`` exists; it only appears by rename."""
    return (out_dir / MODEL_INDEX).is_file()


def build_tiny_pipeline(out_dir: Path, *, seed: int = 0) -> Path:
    """Build the tiny random pipeline into ``out_dir`` (weights drawn from torch seed ``seed``).

    Everything is written under a temporary name beside ``out_dir`` and renamed into place,
    so loaders never see a half-built folder. If another builder finished first, its folder
    is kept.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    bpe_path = clip_bpe_path()
    started = time.perf_counter()
    with staged_folder(out_dir, already_done=is_prepared) as staging:
        tokenizer = write_clip_tokenizer(staging / "tokenizer", bpe_path)
        # A forked RNG: building must not shift the random stream of whoever called us.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**_UNET_CONFIG)  # type: ignore[no-untyped-call]
            vae = AutoencoderKL(**_VAE_CONFIG)  # type: ignore[no-untyped-call]
            text_encoder = CLIPTextModel(CLIPTextConfig(**_TEXT_ENCODER_CONFIG))
        pipeline: Any = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(**_SCHEDULER_CONFIG),  # type: ignore[no-untyped-call]
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        # The tokenizer files are already there; save_pretrained rewrites them identically.
        pipeline.save_pretrained(str(staging), safe_serialization=True)
        (staging / "README.md").write_text(
            _README.format(seed=seed, versions=_versions()), encoding="utf-8"
        )
    logger.info("built tiny pipeline %s in %.1f s", out_dir, time.perf_counter() - started)
    return out_dir


def prepare_tiny_pipeline(out_dir: Path | None = None) -> Path:
    """The tiny pipeline at ``out_dir`` (default: under BOIG_HOME), built once; instant after."""
    out_dir = Path(out_dir) if out_dir is not None else default_tiny_pipeline_dir()
    if is_prepared(out_dir):
        return out_dir
    return build_tiny_pipeline(out_dir)


def _versions() -> str:
    return ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("diffusers", "transformers", "torch", "open-clip-torch")
    )


cli = typer.Typer(add_completion=False, help="Build the generator's tiny random SD pipeline.")


@cli.command()
def main(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Target folder; default BOIG_HOME/models/tiny-sd."),
    ] = None,
) -> None:
    """Build the tiny random Stable Diffusion pipeline (once)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    path = prepare_tiny_pipeline(out)
    typer.echo(f"{path} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    cli()
