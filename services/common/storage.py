"""The artifact store: content-addressed blobs in a local folder or, for several hosts, in an
S3-compatible bucket (``services.common.s3_storage``); both behind one Protocol."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from services.common.errors import InvalidInput, NotFound
from services.common.settings import ArtifactStoreSettings

_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}/[0-9a-f]{64}(\.[a-z0-9]{1,8})?$")


def checked_key(key: str) -> str:
    """The key itself when well formed; keys are validated, never joined raw (no '..', no
    absolute paths, no odd names) whatever the backend."""
    if not _KEY.match(key):
        raise InvalidInput("malformed artifact key")
    return key


def content_key(data: bytes, *, namespace: str, suffix: str) -> tuple[str, str]:
    """``(key, sha256)``: a blob's address is its namespace and the SHA-256 of its bytes."""
    digest = hashlib.sha256(data).hexdigest()
    return checked_key(f"{namespace}/{digest}{suffix}"), digest


@dataclass(frozen=True)
class ArtifactRef:
    key: str
    sha256: str
    size: int


class ArtifactStore(Protocol):
    """Content-addressed blobs: the same bytes in the same namespace get the same key, and
    storing them again refreshes their write time (which retention's ``delete`` respects)."""

    def put(self, data: bytes, *, namespace: str, suffix: str = "") -> ArtifactRef: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str, *, unless_written_since: datetime | None = None) -> bool: ...


class LocalArtifactStore:
    """Blobs under ``root/<namespace>/<sha256><suffix>``; writes are atomic and idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, *, namespace: str, suffix: str = "") -> ArtifactRef:
        key, digest = content_key(data, namespace=namespace, suffix=suffix)
        path = self._path(key)
        try:
            # Same bytes stored again: a fresh mtime tells retention that it is in use again.
            os.utime(path)
        except FileNotFoundError:  # new, or deleted by retention a moment ago: write it
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename, so a reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return ArtifactRef(key=key, sha256=digest, size=len(data))

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {key} not found") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str, *, unless_written_since: datetime | None = None) -> bool:
        """Remove a blob; False when it was absent or (re)written at or after the given time.

        Blobs are content-addressed, so another job may store the same bytes while retention
        removes an old job's copy: ``unless_written_since`` keeps a blob stored again since.
        """
        path = self._path(key)
        try:
            if unless_written_since is not None:
                written = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
                if written >= unless_written_since:
                    return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _path(self, key: str) -> Path:
        return self.root / checked_key(key)


def open_artifact_store(settings: ArtifactStoreSettings) -> ArtifactStore:
    """The store the settings name; boto3 is imported only for the s3 backend."""
    if settings.artifact_backend == "s3":
        from services.common.s3_storage import S3ArtifactStore

        return S3ArtifactStore.from_settings(settings)
    return LocalArtifactStore(settings.artifact_root)
