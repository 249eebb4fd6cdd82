"""Fixtures of the fine-tuning tests: a tiny random Llama with a BPE tokenizer trained here on
the shared prompts (the approach of tests/unit/describer/conftest.py), and a small synthetic
instruction dataset whose answers follow from the context, so a model can learn them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common import prompts
from services.common.contracts import Context, KpiLevel, KpiTarget
from services.trainer.ingest.dataset import FORMAT_VERSION, MANIFEST, Direction

# The learnable mapping: the account decides the level, the level decides the image.
ACCOUNT_LEVELS = {"alpha": KpiLevel.HIGH, "bravo": KpiLevel.LOW, "charlie": KpiLevel.MEDIUM}
LEVEL_IMAGES = {
    KpiLevel.HIGH: "caption: a red shoe\ncolors: red (200,20,30) 60%\ntones: warm, bright",
    KpiLevel.LOW: "caption: a grey wall\ncolors: gray (128,128,128) 80%\ntones: cool, dark",
    KpiLevel.MEDIUM: "caption: a blue cup\ncolors: blue (20,40,200) 50%\ntones: cool, bright",
}


def example_rows(count: int, *, split: str) -> list[dict[str, object]]:
    """``count`` examples of each direction as JSON-able dicts (the ingest file format)."""
    accounts = list(ACCOUNT_LEVELS)
    rows: list[dict[str, object]] = []
    for index in range(count):
        account = accounts[index % len(accounts)]
        level = ACCOUNT_LEVELS[account]
        context = Context(
            account=account,
            text=f"post number {index}",
            posted_at=datetime(2024, 1, 1 + index % 28, 12, tzinfo=UTC),
        )
        for direction in Direction:
            rows.append(
                {
                    "direction": direction.value,
                    "id": f"{split}-{index}",
                    "context": context.model_dump(mode="json"),
                    "kpi_name": "likes",
                    "level": level.value,
                    "percentile": 0.5,
                    "too_few_posts": False,
                    "verbalization": LEVEL_IMAGES[level],
                }
            )
    return rows


def write_dataset(folder: Path, *, train: int = 20, test: int = 6) -> Path:
    """A dataset version folder as ingestion writes it (manifest + both directions)."""
    for split, count in (("train", train), ("test", test)):
        for direction in Direction:
            path = folder / direction.value / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [r for r in example_rows(count, split=split) if r["direction"] == direction]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION}))
    return folder


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("dataset"))


def _tokenizer_corpus() -> list[str]:
    lines: list[str] = []
    for row in example_rows(6, split="corpus"):
        context = Context.model_validate(row["context"])
        level = KpiLevel(str(row["level"]))
        messages = [
            *prompts.describe_messages(context, KpiTarget(level=level)),
            *prompts.behaviour_messages(context, "likes", LEVEL_IMAGES[level]),
        ]
        lines.extend(message["content"] for message in messages)
        lines.append(prompts.behaviour_completion(level))
    return lines * 4


@pytest.fixture(scope="session")
def tiny_model_dir(build_tiny_llama: Callable[[Iterable[str], int], Path]) -> Path:
    """A 2-layer Llama (hidden 64) and a byte-level BPE trained on the prompts' text."""
    return build_tiny_llama(_tokenizer_corpus(), 800)
