"""Train the world SD: the autoencoder, then the UNet and the CLIP text encoder together on the
autoencoder's cached latents, then save an ordinary diffusers pipeline folder.

Every stage checkpoints (safetensors + JSON, never pickle) and resumes, and every random draw
of step ``s`` comes from a generator seeded by ``(seed, stage, s)``, so an interrupted run that
resumes ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from services.common.clip_tokenizer import CLIP_MAX_LENGTH
from services.common.staged_folders import staged_folder
from services.common.torch_device import resolve_device
from services.trainer.training_state import (
    optimizer_from_safe,
    optimizer_to_safe,
    warmup_cosine_rate,
)
from services.trainer.world_sd.config import RESUME_INDEPENDENT_FIELDS, WorldSdConfig
from services.trainer.world_sd.data import CaptionedImage, load_image, pixels
from services.trainer.world_sd.model import (
    WorldSdComponents,
    build_components,
    load_components,
    noise_schedule,
    save_pipeline,
)
from services.trainer.world_sd.probe import ColourProbe

logger = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"
TOKENIZER_DIR = "tokenizer"
VAE_DIR = "vae"
LATENTS_FILE = "latents.safetensors"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.json"
_WEIGHTS = "{name}.safetensors"
_OPTIMIZER = "optimizer.safetensors"
_KEEP_CHECKPOINTS = 2
_STAGE_KEYS = {"vae": 1, "unet": 2}


@dataclass(frozen=True)
class StageReport:
    """Progress of one optimizer step: ``stage`` is "vae" or "unet"; ``step`` runs 1..total."""

    stage: str
    step: int
    total: int
    loss: float


Progress = Callable[[StageReport], None]


@dataclass(frozen=True)
class WorldSdResult:
    pipeline_dir: Path
    vae_loss: float | None
    unet_loss: float | None
    seconds: dict[str, float]
    """Wall time of each stage that ran in this call (resumed stages count what was left)."""


def train_world_sd(
    images: Sequence[CaptionedImage],
    run_dir: Path,
    config: WorldSdConfig,
    *,
    probe_images: Sequence[CaptionedImage] = (),
    progress: Progress | None = None,
) -> WorldSdResult:
    """Train (or resume) a run in ``run_dir`` and return its pipeline folder.

    ``probe_images`` (held-out captions) are sampled every ``config.sample_every`` UNet steps;
    the colour probe's figures go to ``metrics.jsonl`` beside the losses. An exception raised
    by ``progress`` stops the run after that step's checkpoint, if one was due.
    """
    if not images:
        raise ValueError("no training images")
    run_dir.mkdir(parents=True, exist_ok=True)
    pipeline_dir = run_dir / PIPELINE_DIR
    if (pipeline_dir / "model_index.json").is_file():
        return WorldSdResult(pipeline_dir, None, None, {})
    _check_run_config(run_dir, config)
    device = resolve_device(config.device)
    fine_tuning = config.base_model is not None
    components = (
        load_components(config)
        if fine_tuning
        else build_components(config, run_dir / TOKENIZER_DIR)
    )
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    data = pixels([load_image(image.media, config.resolution) for image in images])
    seconds["load"] = time.perf_counter() - started

    vae_loss = None
    started = time.perf_counter()
    if fine_tuning:
        components.vae.eval()  # the base model's autoencoder, kept as it is
    elif (run_dir / VAE_DIR / "config.json").is_file():
        components.vae = type(components.vae).from_pretrained(str(run_dir / VAE_DIR))
    else:
        vae_loss = _train_vae(components, data, run_dir, config, device, progress)
        components.vae.save_pretrained(str(run_dir / VAE_DIR), safe_serialization=True)
        seconds["vae"] = time.perf_counter() - started

    started = time.perf_counter()
    latents = _cached_latents(components, data, run_dir, device, keep_scale=fine_tuning)
    seconds["latents"] = time.perf_counter() - started

    started = time.perf_counter()
    probe = ColourProbe(probe_images, config) if probe_images and config.sample_every else None
    unet_loss = _train_unet(
        components,
        latents,
        [image.caption for image in images],
        run_dir,
        config,
        device,
        progress,
        probe,
    )
    seconds["unet"] = time.perf_counter() - started

    with staged_folder(pipeline_dir) as staging:
        save_pipeline(_to_cpu(components), config, staging)
    return WorldSdResult(pipeline_dir, vae_loss, unet_loss, seconds)


# --- stage 1: the autoencoder ---------------------------------------------------------------


def _train_vae(
    components: WorldSdComponents,
    data: torch.Tensor,
    run_dir: Path,
    config: WorldSdConfig,
    device: torch.device,
    progress: Progress | None,
) -> float | None:
    vae = components.vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate)
    modules = {"vae": vae}
    start = _restore(run_dir, "vae", modules, optimizer)
    loss_value = None
    for step in range(start, config.vae_steps):
        generator = _step_generator(config, "vae", step)
        rows = torch.randint(0, len(data), (config.vae_batch_size,), generator=generator)
        batch = data[rows].to(device)
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        # L1 keeps flat colours exact, MSE punishes the rare large error at an edge.
        loss = (
            (reconstruction - batch).abs().mean()
            + (reconstruction - batch).pow(2).mean()
            + config.vae_kl_weight * posterior.kl().mean()
        )
        rate = warmup_cosine_rate(
            step,
            peak=config.vae_learning_rate,
            warmup_steps=0,
            total_steps=config.vae_steps,
            floor_ratio=config.min_lr_ratio,
        )
        _optimizer_step(optimizer, loss, rate, config.max_grad_norm)
        loss_value = float(loss.detach())
        _after_step(
            run_dir,
            "vae",
            step + 1,
            config.vae_steps,
            loss_value,
            rate,
            modules,
            optimizer,
            config,
            progress,
        )
    vae.eval()
    return loss_value


def _cached_latents(
    components: WorldSdComponents,
    data: torch.Tensor,
    run_dir: Path,
    device: torch.device,
    *,
    keep_scale: bool = False,
) -> dict[str, torch.Tensor]:
    """Posterior mean and std of every training image, encoded once: the UNet stage then
    never runs the encoder. Also fixes the autoencoder's ``scaling_factor`` (SD's 0.18215 for
    its own VAE) as 1 / std of the latents, so the UNet sees unit-variance inputs; a
    pretrained autoencoder keeps the factor its UNet was trained with (``keep_scale``)."""
    path = run_dir / LATENTS_FILE
    if path.is_file():
        cached = load_file(str(path))
    else:
        vae = components.vae.to(device).eval()
        means, stds = [], []
        with torch.inference_mode():
            for batch in data.split(64):  # type: ignore[no-untyped-call]
                posterior = vae.encode(batch.to(device)).latent_dist
                means.append(posterior.mean.cpu())
                stds.append(posterior.std.cpu())
        mean, std = torch.cat(means).contiguous(), torch.cat(stds).contiguous()
        scale = (
            float(components.vae.config.scaling_factor)
            if keep_scale
            else 1.0 / float(torch.sqrt(mean.var() + std.pow(2).mean()))
        )
        cached = {"mean": mean, "std": std, "scaling_factor": torch.tensor(scale)}
        save_file(cached, str(path))
    if not keep_scale:
        components.vae.register_to_config(scaling_factor=float(cached["scaling_factor"]))
    return cached


# --- stage 2: UNet + text encoder -----------------------------------------------------------


def _train_unet(
    components: WorldSdComponents,
    latents: dict[str, torch.Tensor],
    captions: list[str],
    run_dir: Path,
    config: WorldSdConfig,
    device: torch.device,
    progress: Progress | None,
    probe: ColourProbe | None,
) -> float | None:
    unet = components.unet.to(device).train()
    text_encoder = components.text_encoder.to(device).train(config.train_text_encoder)
    text_encoder.requires_grad_(config.train_text_encoder)
    components.vae.to(device).eval()
    scheduler = noise_schedule(config)
    tokens = _tokenize(components.tokenizer, captions)
    empty = _tokenize(components.tokenizer, [""])[0]
    parameters = [*unet.parameters()]
    if config.train_text_encoder:
        parameters += [*text_encoder.parameters()]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    modules = {"unet": unet}
    if config.train_text_encoder:
        modules["text_encoder"] = text_encoder
    start = _restore(run_dir, "unet", modules, optimizer)
    if probe is not None and start == 0:
        _log(run_dir, {"stage": "probe", "step": 0, **probe.measure(components)})
    scale = float(latents["scaling_factor"])
    mean, std = latents["mean"], latents["std"]
    loss_value = None
    for step in range(start, config.unet_steps):
        generator = _step_generator(config, "unet", step)
        rows = torch.randint(0, len(mean), (config.batch_size,), generator=generator)
        sample_noise = torch.randn(mean[rows].shape, generator=generator)
        clean = (mean[rows] + std[rows] * sample_noise) * scale
        dropped = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        ids = torch.where(dropped[:, None], empty[None, :], tokens[rows])
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator
        )
        noisy = scheduler.add_noise(clean, noise, timesteps)
        if config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = noise
        with autocast(device):
            with torch.set_grad_enabled(config.train_text_encoder):
                hidden = text_encoder(ids.to(device))[0]
            prediction = unet(noisy.to(device), timesteps.to(device), hidden).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), target.to(device).float())
        rate = warmup_cosine_rate(
            step,
            peak=config.learning_rate,
            warmup_steps=config.warmup_steps,
            total_steps=config.unet_steps,
            floor_ratio=config.min_lr_ratio,
        )
        _optimizer_step(optimizer, loss, rate, config.max_grad_norm, parameters)
        loss_value = float(loss.detach())
        if probe is not None and (step + 1) % config.sample_every == 0:
            unet.eval()
            text_encoder.eval()
            _log(run_dir, {"stage": "probe", "step": step + 1, **probe.measure(components)})
            unet.train()
            text_encoder.train(config.train_text_encoder)
        _after_step(
            run_dir,
            "unet",
            step + 1,
            config.unet_steps,
            loss_value,
            rate,
            modules,
            optimizer,
            config,
            progress,
        )
    unet.eval()
    text_encoder.eval()
    return loss_value


def autocast(device: torch.device) -> Any:
    """bfloat16 autocast on CUDA (weights and optimizer stay float32); plain float32 on the
    CPU, which has no fast bfloat16 on most of our machines."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Padded to CLIP's 77 positions, as StableDiffusionPipeline encodes prompts."""
    ids: torch.Tensor = tokenizer(
        texts,
        padding="max_length",
        max_length=CLIP_MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids


# --- shared mechanics -----------------------------------------------------------------------


def _step_generator(config: WorldSdConfig, stage: str, step: int) -> torch.Generator:
    seed = (config.seed * 1_000_003 + _STAGE_KEYS[stage]) * 10_000_019 + step
    return torch.Generator().manual_seed(seed)


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    rate: float,
    max_grad_norm: float,
    parameters: Sequence[torch.nn.Parameter] | None = None,
) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate
    loss.backward()  # type: ignore[no-untyped-call]
    params = parameters or [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _after_step(
    run_dir: Path,
    stage: str,
    step: int,
    total: int,
    loss: float,
    rate: float,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    config: WorldSdConfig,
    progress: Progress | None,
) -> None:
    _log(run_dir, {"stage": stage, "step": step, "loss": round(loss, 6), "lr": rate})
    if step % config.checkpoint_every == 0 or step == total:
        _save_checkpoint(run_dir, stage, step, modules, optimizer)
    if progress is not None:
        progress(StageReport(stage, step, total, loss))


def _log(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as log:
        log.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


def _stage_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / CHECKPOINTS / stage


def _save_checkpoint(
    run_dir: Path,
    stage: str,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
) -> None:
    """Weights, optimizer state and step under a temporary name, then renamed: a crash never
    leaves a checkpoint that looks complete but is not."""
    folder = _stage_dir(run_dir, stage)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".tmp-{step:07d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name, module in modules.items():
        weights = {
            key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()
        }
        save_file(weights, str(staging / _WEIGHTS.format(name=name)))
    tensors, groups = optimizer_to_safe(optimizer)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(staging / _OPTIMIZER))
    state = {"stage": stage, "step": step, "optimizer_param_groups": groups}
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    final = folder / f"step-{step:07d}"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    finished = sorted(path for path in folder.iterdir() if path.name.startswith("step-"))
    for old in finished[:-_KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _restore(
    run_dir: Path,
    stage: str,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
) -> int:
    """Load the stage's newest complete checkpoint; the step to continue from (0: none).

    Metric lines past that step are dropped: those steps run again and log again."""
    folder = _stage_dir(run_dir, stage)
    found = sorted(
        path
        for path in (folder.iterdir() if folder.is_dir() else [])
        if path.name.startswith("step-") and (path / STATE_FILE).is_file()
    )
    if not found:
        _truncate_metrics(run_dir, stage, 0)
        return 0
    checkpoint = found[-1]
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    for name, module in modules.items():
        module.load_state_dict(load_file(str(checkpoint / _WEIGHTS.format(name=name))))
    # load_state_dict moves the state to each parameter's device.
    tensors = load_file(str(checkpoint / _OPTIMIZER))
    optimizer.load_state_dict(optimizer_from_safe(tensors, state["optimizer_param_groups"]))
    step: int = state["step"]
    _truncate_metrics(run_dir, stage, step)
    logger.info("resumed world SD %s stage at step %d from %s", stage, step, checkpoint)
    return step


def _truncate_metrics(run_dir: Path, stage: str, step: int) -> None:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        same_stage = record["stage"] == stage or (stage == "unet" and record["stage"] == "probe")
        if not same_stage or record["step"] <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _check_run_config(run_dir: Path, config: WorldSdConfig) -> None:
    """A run folder belongs to one configuration; resuming with another would mix them."""
    path = run_dir / "config.json"
    current = config.model_dump(mode="json", exclude=set(RESUME_INDEPENDENT_FIELDS))
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        # A field added since the run began took its default then.
        defaults = WorldSdConfig().model_dump(mode="json")
        changed = sorted(key for key in current if saved.get(key, defaults[key]) != current[key])
        if changed:
            raise ValueError(
                f"{run_dir} was trained with different settings ({', '.join(changed)}); "
                "use a new run folder or the same settings"
            )
    else:
        path.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")


def _to_cpu(components: WorldSdComponents) -> WorldSdComponents:
    for module in (components.vae, components.text_encoder, components.unet):
        module.to("cpu")
    return components
