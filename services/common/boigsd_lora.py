"""The BoigSD LoRA checkpoint format: the DDPO trainer writes it, the generator loads it.

A folder holding ``pytorch_lora_weights.safetensors`` in diffusers' standard SD LoRA layout
(so community SD 1.x LoRAs load the same way; the peft config rides along in the file's
metadata, so alpha survives the trip) and ``boigsd_lora.json`` with rank, alpha, target
modules and base model. Safetensors only: nothing here unpickles.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.staged_folders import staged_folder

if TYPE_CHECKING:
    import torch

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
LORA_CONFIG_FILE = "boigsd_lora.json"
ADAPTER_NAME = "boigsd"
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "attention": DEFAULT_TARGET_MODULES,
    # Also the transformer blocks' projections and feed-forward and every ResNet convolution:
    # what draws shapes and colours in a small UNet (6x the attention LoRA's weights on the
    # world SD). diffusers loads LoRAs on convolutions too (a round trip is tested).
    "all": (
        *DEFAULT_TARGET_MODULES,
        "proj_in",
        "proj_out",
        "ff.net.0.proj",
        "ff.net.2",
        "conv1",
        "conv2",
    ),
}
"""Named sets of UNet modules a BoigSD LoRA adapts."""
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BoigsdLoraConfig:
    """What ``boigsd_lora.json`` records about a LoRA."""

    rank: int
    alpha: int
    target_modules: tuple[str, ...]
    base_model: str
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BoigsdLoraConfig:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported {LORA_CONFIG_FILE} format {data.get('format_version')}")
        return cls(
            rank=int(data["rank"]),
            alpha=int(data["alpha"]),
            target_modules=tuple(str(name) for name in data["target_modules"]),
            base_model=str(data["base_model"]),
        )


def add_boigsd_lora(
    unet: Any,
    *,
    rank: int = 4,
    alpha: int = 4,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    adapter_name: str = ADAPTER_NAME,
) -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and give its attention projections a fresh LoRA; return its parameters.

    B starts at zero (A Gaussian, as diffusers' LoRA scripts do), so the adapted UNet first
    computes exactly what the base one does.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=list(target_modules),
    )
    unet.add_adapter(config, adapter_name=adapter_name)
    return [parameter for parameter in unet.parameters() if parameter.requires_grad]


def save_boigsd_lora(
    pipeline_or_unet: Any,
    out_dir: Path,
    *,
    base_model: str,
    adapter_name: str = ADAPTER_NAME,
) -> Path:
    """Write the UNet's ``adapter_name`` LoRA to ``out_dir`` (which must not exist yet).

    The folder is assembled under a temporary name beside ``out_dir`` and renamed into place,
    ready for ``publish_checkpoint``.
    """
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    unet = getattr(pipeline_or_unet, "unet", pipeline_or_unet)
    peft_config = unet.peft_config[adapter_name]
    config = BoigsdLoraConfig(
        rank=int(peft_config.r),
        alpha=int(peft_config.lora_alpha),
        target_modules=tuple(sorted(peft_config.target_modules)),
        base_model=base_model,
    )
    # peft keeps target_modules as a set; sorted, the file's metadata is byte-reproducible.
    metadata = {**peft_config.to_dict(), "target_modules": list(config.target_modules)}
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        StableDiffusionPipeline.save_lora_weights(
            staging,
            unet_lora_layers=get_peft_model_state_dict(unet, adapter_name=adapter_name),
            weight_name=LORA_WEIGHTS_FILE,
            safe_serialization=True,
            unet_lora_adapter_metadata=metadata,
        )
        (staging / LORA_CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
    return out_dir


def read_boigsd_lora_config(directory: Path) -> BoigsdLoraConfig | None:
    """The folder's ``boigsd_lora.json``, or None for a LoRA from elsewhere that has none."""
    path = Path(directory) / LORA_CONFIG_FILE
    if not path.is_file():
        return None
    return BoigsdLoraConfig.from_json(path.read_text(encoding="utf-8"))


def load_boigsd_lora(pipe: Any, directory: Path, *, adapter_name: str = ADAPTER_NAME) -> None:
    """Load the LoRA in ``directory`` onto a diffusers SD pipeline as ``adapter_name``.

    ``use_safetensors=True`` turns off diffusers' fallback to a pickled ``.bin`` file.
    """
    directory = Path(directory)
    weights = directory / LORA_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} holds no {LORA_WEIGHTS_FILE}")
    read_boigsd_lora_config(directory)  # a malformed config fails here, before any change
    pipe.load_lora_weights(
        str(directory),
        weight_name=LORA_WEIGHTS_FILE,
        adapter_name=adapter_name,
        use_safetensors=True,
        local_files_only=True,
    )
