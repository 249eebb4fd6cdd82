"""The ingestion pipeline end to end: read, split, featurize, build and write a version."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.clients import FeaturizerClient
from services.common.settings import ImageLimits
from services.trainer.ingest.dataset import build_dataset, write_dataset, write_histories
from services.trainer.ingest.featurize import (
    FeatureCache,
    Featurize,
    HttpFeaturizer,
    featurize_images,
)
from services.trainer.ingest.kpi import KpiBuckets
from services.trainer.ingest.rows import IngestSummary, Variant, read_rows
from services.trainer.ingest.split import SplitMode, split_rows

CACHE_NAME = "featurizer-cache.jsonl"


class NoRowsKept(ValueError):
    """Every row was refused; the summary says why."""

    def __init__(self, summary: IngestSummary) -> None:
        super().__init__(f"no usable rows in {summary.source.name}: all {summary.read} skipped")
        self.summary = summary


@dataclass(frozen=True)
class IngestOutcome:
    summary: IngestSummary
    version_dir: Path


async def ingest(
    data_file: Path,
    *,
    out: Path,
    featurizer: Featurize,
    split_mode: SplitMode = SplitMode.TEMPORAL,
    test_fraction: float = 0.2,
    seed: int = 0,
    variant: Variant | None = None,
    buckets: KpiBuckets | None = None,
    limits: ImageLimits | None = None,
    cache_path: Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    history_path: Path | None = None,
    provenance: dict[str, Any] | None = None,
) -> IngestOutcome:
    """Ingest ``data_file`` into a new ``out/v<N>``; the featurizer cache survives across runs.

    The cache lives outside the version folders (``out/featurizer-cache.jsonl`` by default)
    so a rerun after a crash, or a later run on a grown dataset, skips finished images.
    ``history_path``: the describer's history store, refreshed with these accounts' posts
    (each ingested account's history replaced by this ingest's). ``provenance``: more
    manifest sections (``write_dataset``).
    """
    buckets = buckets or KpiBuckets()
    # Decoding every image to validate it is CPU work; keep the event loop free meanwhile.
    result = await asyncio.to_thread(read_rows, data_file, variant=variant, limits=limits)
    if not result.rows:
        raise NoRowsKept(result.summary)
    split = split_rows(result.rows, mode=split_mode, test_fraction=test_fraction, seed=seed)
    images = {row.image_sha256: row.media for row in result.rows}
    cache = FeatureCache(cache_path or out / CACHE_NAME, featurizer.version)
    verbalizations = await featurize_images(
        images, featurizer, cache, batch_size=batch_size, progress=progress
    )
    dataset = build_dataset(result.rows, split, verbalizations, buckets=buckets)
    version_dir = await asyncio.to_thread(
        write_dataset,
        dataset,
        out,
        summary=result.summary,
        split=split,
        test_fraction=test_fraction,
        seed=seed,
        featurizer_version=featurizer.version,
        buckets=buckets,
        images_sha256=images,
        provenance=provenance,
    )
    await asyncio.to_thread(write_histories, dataset, version_dir, history_path)
    return IngestOutcome(summary=result.summary, version_dir=version_dir)


async def ingest_over_http(
    data_file: Path, *, out: Path, featurizer_url: str, **options: Any
) -> IngestOutcome:
    """``ingest`` through the featurizer service at ``featurizer_url``; ``options`` are
    ``ingest``'s keyword arguments."""
    async with FeaturizerClient(featurizer_url) as client:
        featurizer = await HttpFeaturizer.connect(client)
        return await ingest(data_file, out=out, featurizer=featurizer, **options)
