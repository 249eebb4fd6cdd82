"""Training-state helpers every trainer shares: the optimizer's state as safetensors + JSON
(never pickle), and a learning-rate schedule that is a pure function of the step, so a
resumed run needs no scheduler state of its own."""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine_rate(
    step: int, *, peak: float, warmup_steps: int, total_steps: int, floor_ratio: float
) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor_ratio`` x peak at
    ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_to_safe(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """AdamW state as flat tensors (``state.<param>.<name>``) plus JSON-able param groups."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{index}.{name}"] = tensor.detach().contiguous()
    groups = [
        {key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}
        for group in state_dict["param_groups"]
    ]
    return tensors, groups


def optimizer_from_safe(
    tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    param_groups = [
        {key: tuple(value) if key == "betas" else value for key, value in group.items()}
        for group in groups
    ]
    return {"state": state, "param_groups": param_groups}
