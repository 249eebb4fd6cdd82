"""The demo's BoigLLM step: two brands' high-KPI target descriptions side by side with each
brand's real high-KPI look from its history, then an account the model was never trained on,
described from a few dozen freshly ingested posts (retrieval-augmented prompts)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from services.common.clients import DescriberClient
from services.common.contracts import Context, KpiLevel, KpiTarget
from services.common.history import HistoryStore
from services.common.settings import default_history_path
from services.trainer.ingest.pipeline import ingest_over_http
from services.trainer.world.brands import SUNBREW
from services.trainer.world.generate import POSTS_FILE, generate_world

SHOWN_BRANDS = ("northgatebank", "pippoptoys")
NEW_ACCOUNT_POSTS = 36


def _latest_context(dataset_dir: Path, account: str) -> Context:
    """The account's most recent post in the ingested world sample: a realistic request."""
    rows = [
        json.loads(line)
        for split in ("train", "test")
        for line in (dataset_dir / "content" / f"{split}.jsonl").read_text().splitlines()
    ]
    mine = [row for row in rows if row["context"]["account"] == account]
    latest = max(mine, key=lambda row: row["context"]["posted_at"])
    return Context.model_validate(latest["context"])


async def _describe(url: str, context: Context, level: KpiLevel) -> str:
    async with DescriberClient(url, timeout=600.0) as client:
        response = await client.describe(context, KpiTarget(name="likes", level=level))
    return response.text


def _history_line(store: HistoryStore | None, account: str, level: KpiLevel) -> str:
    summary = store.summary(account, "likes", level) if store is not None else None
    if summary is None:
        return "(no history)"
    return summary.line(level).replace("history at ", "", 1)


def show_brand_looks(
    describer_url: str,
    featurizer_url: str,
    sample_dataset: Path,
    run_dir: Path,
    console: Console,
) -> None:
    history_path = default_history_path()
    store = HistoryStore.read(history_path) if history_path.is_file() else None
    brands = [b for b in SHOWN_BRANDS if store is not None and b in store.accounts()]
    if len(brands) < 2:
        console.print(
            "no ingested history of the world's brands: `make models` trains BoigLLM on the "
            "synthetic world and ingests its history; skipping this step"
        )
        return
    table = Table(title="high likes: what BoigLLM asks for vs each brand's real history")
    table.add_column("")
    for brand in brands:
        table.add_column(brand, overflow="fold")
    described = [
        asyncio.run(_describe(describer_url, _latest_context(sample_dataset, b), KpiLevel.HIGH))
        for b in brands
    ]
    table.add_row("BoigLLM, high likes", *described)
    for level in (KpiLevel.HIGH, KpiLevel.LOW):
        table.add_row(
            f"real look of its {level.value}-likes posts",
            *[_history_line(store, b, level) for b in brands],
        )
    console.print(table)

    console.print(
        f"a new account: {NEW_ACCOUNT_POSTS} posts of '{SUNBREW.account}' (a brand BoigLLM was "
        "never trained on) ingested now; its history is what the prompt carries"
    )
    world = run_dir / "new-account"
    generate_world(world, seed=7, brands=(SUNBREW,), posts_per_brand=NEW_ACCOUNT_POSTS)
    outcome = asyncio.run(
        ingest_over_http(
            world / POSTS_FILE,
            out=run_dir / "new-account-dataset",
            featurizer_url=featurizer_url,
            progress=False,
            history_path=history_path,
        )
    )
    store = HistoryStore.read(history_path)
    context = _latest_context(outcome.version_dir, SUNBREW.account)
    new = Table(title=f"{SUNBREW.account}, never trained on: described from its ingested history")
    new.add_column("")
    new.add_column(SUNBREW.account, overflow="fold")
    new.add_row(
        "BoigLLM, high likes", asyncio.run(_describe(describer_url, context, KpiLevel.HIGH))
    )
    new.add_row(
        "real look of its high-likes posts", _history_line(store, SUNBREW.account, KpiLevel.HIGH)
    )
    console.print(new)
