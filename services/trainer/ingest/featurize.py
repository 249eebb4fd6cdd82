"""Batch featurization of every training image, resumable through an append-only cache.

The cache is a JSONL file keyed by (image sha256, featurizer version), appended and flushed
after each batch, so a run that is killed loses at most the batch in flight and a restarted
run featurizes only the images it has not seen under the same featurizer version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from PIL import Image
from pydantic import ValidationError
from tqdm import tqdm

from services.common.clients import FeaturizerClient
from services.common.contracts import ImageInput, Verbalization
from services.common.errors import UpstreamError
from services.common.images import encode_png

logger = logging.getLogger(__name__)


class Featurize(Protocol):
    """What ingestion needs from a featurizer: a batch call and a version for cache keys."""

    @property
    def version(self) -> str: ...

    async def featurize(self, images: list[ImageInput]) -> list[Verbalization]: ...


class HttpFeaturizer:
    """The featurizer service over HTTP; build with ``connect`` so ``version`` is known."""

    def __init__(self, client: FeaturizerClient, version: str) -> None:
        self._client = client
        self._version = version

    @classmethod
    async def connect(cls, client: FeaturizerClient) -> HttpFeaturizer:
        """Read the version from /health, including the detector, whose weights change output."""
        health = await client.health()
        if health.get("status") != "ok":
            raise UpstreamError(f"featurizer is not ready: {health.get('status')}")
        version = str(health.get("version", "unknown"))
        detector = health.get("detector")
        if isinstance(detector, Mapping) and detector.get("loaded"):
            version += f"+{detector.get('model')}@{detector.get('version')}"
        return cls(client, version)

    @property
    def version(self) -> str:
        return self._version

    async def featurize(self, images: list[ImageInput]) -> list[Verbalization]:
        response = await self._client.featurize(images)
        if self._version.split("+", 1)[0] != response.featurizer_version:
            # A featurizer redeployed mid-run would mix two description vocabularies under
            # one cache key; stop instead, a rerun picks up with the new version.
            raise UpstreamError(
                f"featurizer version changed from {self._version} to "
                f"{response.featurizer_version} during the run"
            )
        if len(response.results) != len(images):
            raise UpstreamError("featurizer answered a different number of images")
        return [result.verbalization for result in response.results]

    async def featurize_images(
        self, images: Sequence[Image.Image], *, batch_size: int
    ) -> list[Verbalization]:
        """Descriptions of in-memory images, in order, sent ``batch_size`` at a time as PNG."""
        found: list[Verbalization] = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            found.extend(await self.featurize([ImageInput(data=encode_png(x)) for x in batch]))
        return found


class FeatureCache:
    """Verbalizations by image sha256 for one featurizer version, backed by a JSONL file."""

    def __init__(self, path: Path, version: str) -> None:
        self.path = path
        self.version = version
        self._entries: dict[str, Verbalization] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        with self.path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    entry = json.loads(line)
                    if entry["featurizer_version"] != self.version:
                        continue
                    verbalization = Verbalization.model_validate(entry["verbalization"])
                    self._entries[str(entry["sha256"])] = verbalization
                except (json.JSONDecodeError, KeyError, TypeError, ValidationError):
                    # A run killed mid-write leaves a torn last line; that image is redone.
                    logger.warning(
                        "%s line %d unreadable; its image is featurized again", self.path, number
                    )

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> Verbalization:
        return self._entries[digest]

    def append(self, items: Mapping[str, Verbalization]) -> None:
        """Persist one batch: written, flushed and fsynced before the next batch starts."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps(
                {
                    "sha256": digest,
                    "featurizer_version": self.version,
                    "verbalization": verbalization.model_dump(mode="json"),
                }
            )
            for digest, verbalization in items.items()
        ]
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        self._entries.update(items)


async def featurize_images(
    images: Mapping[str, Path],
    featurizer: Featurize,
    cache: FeatureCache,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Verbalization]:
    """Verbalize every image (sha256 -> file), skipping those already in the cache."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if cache.version != featurizer.version:
        raise ValueError(
            f"cache is for featurizer {cache.version}, the featurizer is {featurizer.version}"
        )
    pending = [digest for digest in images if digest not in cache]
    with tqdm(
        total=len(images),
        initial=len(images) - len(pending),
        desc="featurizing",
        unit="img",
        disable=not progress,
    ) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            # File reads and the fsync run off the event loop, next to the HTTP client's I/O.
            inputs = await asyncio.to_thread(_encode, [(d, images[d]) for d in batch])
            verbalizations = await featurizer.featurize(inputs)
            if len(verbalizations) != len(batch):
                raise UpstreamError("featurizer answered a different number of images")
            await asyncio.to_thread(cache.append, dict(zip(batch, verbalizations, strict=True)))
            bar.update(len(batch))
    return {digest: cache.get(digest) for digest in images}


def _encode(items: list[tuple[str, Path]]) -> list[ImageInput]:
    return [ImageInput(id=digest[:32], data=path.read_bytes()) for digest, path in items]
