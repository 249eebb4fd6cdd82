"""Model folders: short content hashes (they key caches and record which weights made what)
and the sampling settings a diffusion pipeline folder recommends."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

_FULL_HASH_LIMIT = 64 * 1024 * 1024
_SAMPLE_BYTES = 4 * 1024 * 1024


def folder_version(path: Path, *, manifest: str | None = None) -> str:
    """12 hex digits that change when the folder's weights change.

    A folder with a manifest (``make models``, published checkpoints) is identified by the
    manifest, which records the sha256 of every file. Otherwise every file is hashed, except
    that files over 64 MiB contribute their size, modification time and first and last 4 MiB,
    so that a multi-GB model does not add seconds to start-up. The modification time is there
    because a fine-tune may change only middle layers; a copied folder merely misses a cache.
    """
    digest = hashlib.sha256()
    if manifest is not None and (path / manifest).is_file():
        digest.update((path / manifest).read_bytes())
        return digest.hexdigest()[:12]
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(file.relative_to(path).as_posix().encode())
        size = file.stat().st_size
        digest.update(size.to_bytes(8, "little"))
        with file.open("rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                digest.update(handle.read())
            else:
                digest.update(file.stat().st_mtime_ns.to_bytes(8, "little"))
                digest.update(handle.read(_SAMPLE_BYTES))
                handle.seek(size - _SAMPLE_BYTES)
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:12]


SAMPLING_FILE = "boig_sampling.json"
"""Beside a diffusers pipeline's model_index.json: the sampling settings it was measured best
at (written by the trainer for the models it trains; absent from third-party folders)."""


@dataclass(frozen=True)
class SamplingDefaults:
    """A pipeline folder's recommended classifier-free guidance and denoising steps."""

    guidance_scale: float | None = None
    steps: int | None = None


def read_sampling_defaults(folder: Path) -> SamplingDefaults:
    """The folder's ``boig_sampling.json``, or no recommendation (a malformed file is an
    error: a model's author wrote it on purpose)."""
    path = folder / SAMPLING_FILE
    if not path.is_file():
        return SamplingDefaults()
    data = json.loads(path.read_text(encoding="utf-8"))
    guidance, steps = data.get("guidance_scale"), data.get("steps")
    if guidance is not None and not (isinstance(guidance, int | float) and guidance >= 0):
        raise ValueError(f"{path}: guidance_scale must be a number ≥ 0, got {guidance!r}")
    if steps is not None and not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"{path}: steps must be an integer ≥ 1, got {steps!r}")
    return SamplingDefaults(
        guidance_scale=None if guidance is None else float(guidance), steps=steps
    )


def write_sampling_defaults(folder: Path, defaults: SamplingDefaults) -> None:
    payload = {"guidance_scale": defaults.guidance_scale, "steps": defaults.steps}
    (folder / SAMPLING_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
