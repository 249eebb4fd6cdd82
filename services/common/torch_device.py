"""Device and dtype choice shared by every torch-using service (imports torch: load lazily)."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX). Elsewhere torch
    emulates it, and a bfloat16 SmolLM2 training step took ~2.5x as long as float32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_dtype(
    dtype: str, device: torch.device, *, bf16_on_capable_cpu: bool = False
) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 on the CPU (CPU bfloat16 is slower on most CPUs),
    or, with ``bf16_on_capable_cpu``, bfloat16 on CPUs that have it natively."""
    if dtype == "auto":
        if device.type == "cuda" or (bf16_on_capable_cpu and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    resolved: torch.dtype = getattr(torch, dtype)
    return resolved
