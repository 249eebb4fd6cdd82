"""Short content hashes of model folders: they key caches and record which weights made what."""

from __future__ import annotations

import hashlib
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
