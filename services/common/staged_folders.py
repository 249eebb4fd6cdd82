"""Folders that appear whole or not at all: built under a temporary name, renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(
    out_dir: Path, *, already_done: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield an empty folder beside ``out_dir``; on success it is renamed to ``out_dir``.

    A crash or an exception leaves nothing where loaders look. When another process finished
    first (rename onto a non-empty folder fails) and ``already_done(out_dir)`` says its result
    is complete, theirs is kept; otherwise the rename error propagates.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield staging
        try:
            os.rename(staging, out_dir)
        except OSError:
            if already_done is None or not already_done(out_dir):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
