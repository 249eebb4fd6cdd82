"""Device and dtype choice: bfloat16 only where it is computed natively."""

from __future__ import annotations

import pytest
import torch

from services.common import torch_device
from services.common.torch_device import resolve_device, resolve_dtype

CPU = torch.device("cpu")


def _capabilities(monkeypatch: pytest.MonkeyPatch, **flags: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(flags))


def test_auto_is_float32_on_the_cpu_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    _capabilities(monkeypatch, avx512_bf16=True)
    assert resolve_dtype("auto", CPU) is torch.float32


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, torch.float32),
        ({"avx512_bf16": False, "amx_bf16": False}, torch.float32),
        ({"avx512_bf16": True}, torch.bfloat16),
        ({"amx_bf16": True}, torch.bfloat16),
    ],
)
def test_training_takes_bfloat16_only_on_cpus_that_have_it(
    monkeypatch: pytest.MonkeyPatch, flags: dict[str, bool], expected: torch.dtype
) -> None:
    _capabilities(monkeypatch, **flags)
    assert torch_device.cpu_has_native_bf16() is (expected is torch.bfloat16)
    assert resolve_dtype("auto", CPU, bf16_on_capable_cpu=True) is expected


def test_auto_is_bfloat16_on_cuda_and_an_explicit_dtype_wins() -> None:
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype("float16", CPU, bf16_on_capable_cpu=True) is torch.float16
    assert resolve_device("cpu") == CPU
