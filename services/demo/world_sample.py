"""The demo's first step: a small sample of the synthetic brand world, ingested through the
running featurizer exactly as a team's own creative history would be (design §7)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rich.console import Console

from services.trainer.ingest.pipeline import IngestOutcome, ingest_over_http
from services.trainer.world.generate import POSTS_FILE, generate_world

POSTS_PER_BRAND = 10


def ingest_world_sample(featurizer_url: str, run_dir: Path, console: Console) -> IngestOutcome:
    world = run_dir / "world"
    manifest = generate_world(world, seed=0, posts_per_brand=POSTS_PER_BRAND)
    console.print(
        f"synthetic world: {manifest.posts} posts of {len(manifest.brands)} brands "
        f"({', '.join(brand.account for brand in manifest.brands)})"
    )
    outcome = asyncio.run(
        ingest_over_http(
            world / POSTS_FILE,
            out=run_dir / "dataset",
            featurizer_url=featurizer_url,
            progress=False,
        )
    )
    console.print(outcome.summary.table())
    example = (outcome.version_dir / "content" / "train.jsonl").read_text().splitlines()[0]
    row = json.loads(example)
    console.print(
        f"dataset {outcome.version_dir.name}: e.g. {row['context']['account']} at "
        f"{row['level']} {row['kpi_name']} ->\n{row['verbalization']}"
    )
    return outcome
