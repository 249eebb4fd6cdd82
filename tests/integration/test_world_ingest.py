"""The trainer's data path on real code end to end: a synthetic brand world, ingested through
the real featurizer app (with the shapes detector) into a versioned instruction dataset."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from services.common.clients import FeaturizerClient
from services.featurizer.app import create_app as create_featurizer
from services.tooling.models import prepare_all
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.ingest.pipeline import ingest
from services.trainer.world.generate import generate_world


async def test_world_to_instruction_dataset(tmp_path: Path) -> None:
    prepare_all(world_sd=False, boigllm=False, log=False)
    world = tmp_path / "world"
    generate_world(world, seed=7, posts_per_brand=12, years=3)
    app = create_featurizer()
    async with app.router.lifespan_context(app):
        client = FeaturizerClient("http://featurizer", transport=httpx.ASGITransport(app=app))
        featurizer = await HttpFeaturizer.connect(client)
        outcome = await ingest(
            world / "posts.jsonl", out=tmp_path / "data", featurizer=featurizer, progress=False
        )
        # A rerun finds every image in the cache: nothing reaches the featurizer.
        calls = 0
        original = featurizer.featurize

        async def counting(images: list) -> list:  # type: ignore[type-arg]
            nonlocal calls
            calls += 1
            return await original(images)

        featurizer.featurize = counting  # type: ignore[method-assign]
        again = await ingest(
            world / "posts.jsonl", out=tmp_path / "data", featurizer=featurizer, progress=False
        )
        await client.aclose()
    assert calls == 0
    assert again.version_dir != outcome.version_dir
    manifest = json.loads((outcome.version_dir / "manifest.json").read_text())
    assert manifest["rows"] == {"read": 48, "kept": 48, "skipped": {}}
    assert manifest["featurizer_version"] == featurizer.version
    content = [
        json.loads(line) for line in (outcome.version_dir / "content" / "train.jsonl").open()
    ]
    assert content and all("colors:" in example["verbalization"] for example in content)
    # The detector reads the world's shapes back: most creatives with shapes have objects.
    with_objects = sum("objects:" in example["verbalization"] for example in content)
    assert with_objects >= len(content) // 3
    behaviour = [
        json.loads(line) for line in (outcome.version_dir / "behaviour" / "test.jsonl").open()
    ]
    assert {example["level"] for example in behaviour} <= {"low", "medium", "high"}
    assert min(e["context"]["posted_at"] for e in behaviour) >= min(
        e["context"]["posted_at"] for e in content
    )
