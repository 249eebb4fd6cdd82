"""Backends by name. Factories import their heavy modules (torch, transformers) on call, so
importing this package stays light."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.common.checkpoints import CheckpointRef, load_manifest
from services.common.serving_profile import ServingProfile
from services.describer.backends.base import LlmBackend
from services.describer.settings import DescriberSettings

BackendFactory = Callable[[DescriberSettings, CheckpointRef | None], LlmBackend]
"""Builds a backend from the settings, with the LoRA checkpoint applied when one is given."""


def _transformers(settings: DescriberSettings, checkpoint: CheckpointRef | None) -> LlmBackend:
    from services.describer.backends.transformers_backend import TransformersBackend

    adapter: Path | None = checkpoint.path if checkpoint is not None else None
    return TransformersBackend.from_settings(
        settings,
        adapter=adapter,
        adapter_version=checkpoint.version if checkpoint is not None else None,
        few_shot_prompt=checkpoint is None or trained_on_few_shot_prompt(checkpoint),
        serving=ServingProfile.read(checkpoint.path) if checkpoint is not None else None,
    )


def _vllm(settings: DescriberSettings, checkpoint: CheckpointRef | None) -> LlmBackend:
    from services.describer.backends.vllm_backend import VllmBackend

    return VllmBackend.from_settings(
        settings,
        checkpoint=checkpoint,
        few_shot_prompt=checkpoint is None or trained_on_few_shot_prompt(checkpoint),
        serving=ServingProfile.read(checkpoint.path) if checkpoint is not None else None,
    )


def trained_on_few_shot_prompt(checkpoint: CheckpointRef) -> bool:
    """What the checkpoint's manifest records (the trainer's ``few_shot_prompt``); checkpoints
    from before that setting existed were trained on the few-shot prompt."""
    value = load_manifest(checkpoint, verify=False).hyperparameters.get("few_shot_prompt", True)
    return bool(value)


BACKENDS: dict[str, BackendFactory] = {
    "transformers": _transformers,
    "vllm": _vllm,
}


def create_backend(
    settings: DescriberSettings, checkpoint: CheckpointRef | None = None
) -> LlmBackend:
    """Build (and load) the backend ``settings.backend`` names, with ``checkpoint``'s adapter
    when given (verify it first: see ``load_manifest``); blocking."""
    try:
        factory = BACKENDS[settings.backend]
    except KeyError:
        raise ValueError(f"unknown describer backend {settings.backend!r}") from None
    return factory(settings, checkpoint)


__all__ = [
    "BACKENDS",
    "BackendFactory",
    "LlmBackend",
    "create_backend",
    "trained_on_few_shot_prompt",
]
