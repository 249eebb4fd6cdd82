"""Backends by name. Factories import their heavy modules (torch, transformers) on call, so
importing this package stays light."""

from __future__ import annotations

from collections.abc import Callable

from services.describer.backends.base import LlmBackend
from services.describer.settings import DescriberSettings

BackendFactory = Callable[[DescriberSettings], LlmBackend]


def _transformers(settings: DescriberSettings) -> LlmBackend:
    from services.describer.backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_settings(settings)


BACKENDS: dict[str, BackendFactory] = {
    "transformers": _transformers,
    # "vllm": talks to a vLLM OpenAI-compatible server (design §3); not implemented yet.
}


def create_backend(settings: DescriberSettings) -> LlmBackend:
    """Build (and load) the backend ``settings.backend`` names; blocking."""
    try:
        factory = BACKENDS[settings.backend]
    except KeyError:
        raise ValueError(f"unknown describer backend {settings.backend!r}") from None
    return factory(settings)


__all__ = ["BACKENDS", "BackendFactory", "LlmBackend", "create_backend"]
