"""One local Stable Diffusion 1.x pipeline (diffusers) and the BoigSD LoRA on top of it.

Image ``i`` of a request is drawn from its own CPU generator seeded ``seed + i``, so it is
reproducible from ``(seed, i)`` whatever the batch size or device.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from services.common.boigsd_lora import ADAPTER_NAME, load_boigsd_lora
from services.common.model_folders import (
    SamplingDefaults,
    folder_version,
    read_sampling_defaults,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
"""``on_step(step, total)`` after each denoising step; ``step`` runs 1..total."""

_LATENT_MULTIPLE = 8
_MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ImageRequest:
    """One pipeline call: ``count`` images of one prompt."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    count: int


class ImagePipeline:
    """A diffusers Stable Diffusion folder loaded once, from local safetensors files only.

    One generation at a time: the scheduler holds per-call state, so ``generate`` and the
    LoRA methods share a lock.
    """

    def __init__(self, model_path: Path, *, device: str = "auto", dtype: str = "auto") -> None:
        # torch and diffusers load with the first pipeline, not with the worker module: the
        # Celery parent process and code that only plans or records jobs stay light.
        from diffusers import StableDiffusionPipeline

        from services.common.torch_device import resolve_device

        self.model_path = Path(model_path)
        self.device = resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.lora_version: str | None = None
        """The loaded BoigSD LoRA's version; None while the base weights run."""
        self.base_version = pipeline_version(self.model_path)
        self.sampling: SamplingDefaults = read_sampling_defaults(self.model_path)
        """The guidance and steps the folder recommends (none for third-party folders)."""
        self._lock = threading.Lock()
        self._adapter: str | None = None
        self._adapters_loaded = 0
        self._pipe: Any = StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            self.model_path,
            local_files_only=True,
            use_safetensors=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            dtype=self.dtype,
        ).to(self.device)
        self._pipe.set_progress_bar_config(disable=True)
        sample = self._pipe.unet.config.sample_size
        latent_width, latent_height = (sample, sample) if isinstance(sample, int) else sample[::-1]
        scale = int(self._pipe.vae_scale_factor)
        self.native_size: tuple[int, int] = (latent_width * scale, latent_height * scale)
        """(width, height) the UNet was trained at: the size to use when a request names none."""

    @property
    def pipe(self) -> Any:
        """The underlying diffusers pipeline (benchmarks, the trainer's sampling)."""
        return self._pipe

    def generate(
        self, request: ImageRequest, on_step: StepCallback | None = None
    ) -> list[Image.Image]:
        """Draw ``request.count`` images in one pipeline call.

        ``on_step`` runs after every denoising step; an exception it raises stops the run
        there and propagates out of ``generate``, which is how a job is canceled.
        """
        import torch

        _check_request(request)
        generators = [
            torch.Generator(device="cpu").manual_seed(request.seed + index)
            for index in range(request.count)
        ]
        step_end = None if on_step is None else _step_end_callback(on_step)
        with self._lock, torch.inference_mode():
            output = self._pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                width=request.width,
                height=request.height,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                num_images_per_prompt=request.count,
                generator=generators,
                output_type="pil",
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=[],
            )
        images: list[Image.Image] = output.images
        return images

    def count_prompt_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in the text encoder, without the start and end tokens (for
        ``render_prompt(count_tokens=...)``)."""
        # tokenize(), unlike __call__, does not log a warning for texts over 77 tokens
        return len(self._pipe.tokenizer.tokenize(text))

    def load_lora(self, directory: Path, version: str) -> None:
        """Serve the BoigSD LoRA in ``directory`` (diffusers SD LoRA format), replacing any
        loaded before.

        The new adapter is loaded beside the old one and the old one removed only after, so a
        LoRA that fails to load leaves the previous one serving.
        """
        with self._lock:
            self._adapters_loaded += 1
            adapter = f"{ADAPTER_NAME}{self._adapters_loaded}"
            with warnings.catch_warnings():
                # peft warns that a second adapter joins the first: here that is the point.
                warnings.filterwarnings(
                    "ignore", message="Already found a `peft_config`", category=UserWarning
                )
                load_boigsd_lora(self._pipe, Path(directory), adapter_name=adapter)
            if self._adapter is not None:
                self._pipe.delete_adapters(self._adapter)
            self._pipe.set_adapters(adapter)
            self._adapter = adapter
            self.lora_version = version
        logger.info("BoigSD LoRA %s loaded from %s", version, directory)

    def unload_lora(self) -> None:
        """Back to the base weights exactly (LoRA layers removed, never fused)."""
        with self._lock:
            if self._adapter is not None:
                self._pipe.unload_lora_weights()
            self._adapter = None
            self.lora_version = None


def _step_end_callback(on_step: StepCallback) -> Callable[[Any, int, Any, dict[str, Any]], Any]:
    def step_end(pipe: Any, step_index: int, _timestep: Any, tensors: dict[str, Any]) -> Any:
        on_step(step_index + 1, pipe.num_timesteps)
        return tensors

    return step_end


def _check_request(request: ImageRequest) -> None:
    for name, size in (("width", request.width), ("height", request.height)):
        if size <= 0 or size % _LATENT_MULTIPLE:
            raise ValueError(
                f"{name} must be a positive multiple of {_LATENT_MULTIPLE} pixels (the VAE "
                f"downsamples by 8), got {size}"
            )
    if request.steps < 1:
        raise ValueError(f"steps must be at least 1, got {request.steps}")
    if request.count < 1:
        raise ValueError(f"count must be at least 1, got {request.count}")
    if not 0 <= request.seed <= _MAX_SEED - request.count:
        raise ValueError(f"seed must be in [0, 2**63 - 1 - count], got {request.seed}")


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA (SD 1.x's VAE is stable in it), float32 on the CPU."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be auto or a torch floating-point dtype, got {dtype!r}")
    return resolved


def pipeline_version(path: Path) -> str:
    """A short content hash of a pipeline folder, to record which base weights made an image."""
    return folder_version(path)
