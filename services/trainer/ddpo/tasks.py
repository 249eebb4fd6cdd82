"""What DDPO trains on: contexts of the training split, each with the prompt the generator
would write for it from BoigLLM's description of a high-KPI image."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.clients import DescriberClient, call_with_retries
from services.common.contracts import Context, KpiLevel, KpiTarget
from services.common.image_prompts import TokenCounter, estimate_clip_tokens, render_prompt
from services.trainer.finetune.data import resolve_dataset_dir

CONTENT_TRAIN = Path("content") / "train.jsonl"


@dataclass(frozen=True)
class Task:
    """One thing to draw: its prompt, the context the reward judges it in, and a key that
    groups the task's rewards for per-prompt advantages."""

    key: str
    prompt: str
    context: Context


def training_contexts(version_dir: Path, *, limit: int, seed: int = 0) -> list[Context]:
    """Up to ``limit`` contexts of a dataset's (a version folder, or a folder with ``latest``)
    training split (never its test split:
    held-out contexts are for evaluation), drawn evenly across accounts."""
    folder = resolve_dataset_dir(version_dir)
    rows = [
        json.loads(line)
        for line in (folder / CONTENT_TRAIN).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    by_account: dict[str, list[Context]] = {}
    for row in rows:
        context = Context.model_validate(row["context"])
        by_account.setdefault(context.account, []).append(context)
    rng = np.random.default_rng(seed)
    for contexts in by_account.values():
        rng.shuffle(contexts)  # type: ignore[arg-type]
    picked: list[Context] = []
    # Round-robin over accounts, so a small limit still covers every brand.
    while len(picked) < limit and any(by_account.values()):
        for account in sorted(by_account):
            if by_account[account] and len(picked) < limit:
                picked.append(by_account[account].pop())
    return picked


async def build_tasks(
    contexts: Sequence[Context],
    describer: DescriberClient,
    *,
    level: KpiLevel = KpiLevel.HIGH,
    kpi_name: str = "likes",
    count_tokens: TokenCounter = estimate_clip_tokens,
    concurrency: int = 4,
    retries: int = 20,
) -> list[Task]:
    """A task per context: the prompt rendered from BoigLLM's description at ``level``. A
    busy describer's 503s are waited out (its Retry-After), ``retries`` times per context."""
    gate = asyncio.Semaphore(concurrency)
    target = KpiTarget(name=kpi_name, level=level)

    async def one(index: int, context: Context) -> Task:
        async with gate:
            described = await call_with_retries(
                lambda: describer.describe(context, target), retries=retries, what="describer"
            )
        prompt = render_prompt(described.verbalization, context, count_tokens=count_tokens)
        return Task(key=f"{context.account}-{index}", prompt=prompt, context=context)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(contexts))))
