"""Dataset examples -> (prompt, target) text with the shared prompts -> token ids whose labels
cover only the target, so the loss teaches the answer and never the prompt."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import prompts
from services.common.contracts import KpiTarget
from services.trainer.ingest.dataset import (
    LATEST,
    MANIFEST,
    Direction,
    InstructionExample,
    read_manifest,
)

IGNORE_INDEX = -100
"""Label of positions the loss skips (the value torch's cross-entropy ignores by default)."""


@dataclass(frozen=True)
class PromptTarget:
    direction: Direction
    prompt: str
    target: str


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    """IGNORE_INDEX over the prompt, the token id over the target (and the end-of-turn token)."""


def resolve_dataset_dir(path: Path) -> Path:
    """A dataset root (with a ``latest`` pointer) or one version folder -> the version folder."""
    pointer = path / LATEST
    if pointer.is_file():
        return path / pointer.read_text(encoding="utf-8").strip()
    return path


def load_examples(dataset_dir: Path, split: str) -> dict[Direction, list[InstructionExample]]:
    """Both directions of one split ("train" or "test"); a missing direction file reads empty."""
    folder = resolve_dataset_dir(dataset_dir)
    if (folder / MANIFEST).is_file():
        read_manifest(folder)  # refuses a format this code does not know
    examples: dict[Direction, list[InstructionExample]] = {}
    for direction in Direction:
        path = folder / direction.value / f"{split}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        examples[direction] = [
            InstructionExample.model_validate_json(line) for line in lines if line.strip()
        ]
    if not any(examples.values()):
        raise FileNotFoundError(f"no {split} examples under {folder}")
    return examples


def to_prompt_target(
    example: InstructionExample, tokenizer: Any, *, few_shot: bool = False
) -> PromptTarget:
    """Content simulation: target is the verbalization text, after the compact prompt (or the
    few-shot one). Behaviour simulation: the prompt ends with ``level:`` (where the describer
    scores levels) and the target is the level word."""
    if example.direction is Direction.CONTENT:
        messages = prompts.describe_messages(
            example.context,
            KpiTarget(name=example.kpi_name, level=example.level),
            few_shot=few_shot,
        )
        return PromptTarget(
            example.direction, prompts.chat_prompt(tokenizer, messages), example.verbalization
        )
    messages = prompts.behaviour_messages(example.context, example.kpi_name, example.verbalization)
    return PromptTarget(
        example.direction,
        prompts.chat_prompt(tokenizer, messages) + prompts.BEHAVIOUR_ANSWER_PREFIX,
        prompts.level_continuation(example.level),
    )


def tokenize(pair: PromptTarget, tokenizer: Any) -> TokenizedExample:
    """Encode prompt + target together, as the describer does when it scores: BPE merges across
    the boundary, so the target's tokens are those of the joint encoding past the longest
    prefix it shares with the prompt alone. The end-of-turn token follows, so that the model
    learns to stop where the describer's generation stops."""
    prompt_ids = _ids(tokenizer, pair.prompt)
    joint = _ids(tokenizer, pair.prompt + pair.target)
    shared = 0
    for a, b in zip(prompt_ids, joint, strict=False):
        if a != b:
            break
        shared += 1
    if shared == len(joint):
        raise ValueError("the target encodes to no tokens")
    input_ids = [*joint]
    if tokenizer.eos_token_id is not None:
        input_ids.append(int(tokenizer.eos_token_id))
    labels = [IGNORE_INDEX] * shared + input_ids[shared:]
    return TokenizedExample(input_ids=input_ids, labels=labels)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # No special tokens added: the chat template already wrote them, as in the describer.
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


@dataclass(frozen=True)
class PreparedSplit:
    examples: dict[Direction, list[TokenizedExample]]
    skipped_too_long: int


def prepare(
    examples: dict[Direction, list[InstructionExample]],
    tokenizer: Any,
    *,
    max_seq_length: int,
    few_shot: bool = False,
) -> PreparedSplit:
    prepared: dict[Direction, list[TokenizedExample]] = {}
    skipped = 0
    for direction, items in examples.items():
        kept = []
        for example in items:
            tokenized = tokenize(to_prompt_target(example, tokenizer, few_shot=few_shot), tokenizer)
            if len(tokenized.input_ids) > max_seq_length:
                skipped += 1
                continue
            kept.append(tokenized)
        prepared[direction] = kept
    return PreparedSplit(examples=prepared, skipped_too_long=skipped)


def batch_schedule(
    sizes: dict[Direction, int],
    *,
    content_fraction: float,
    batch_size: int,
    steps: int,
    seed: int,
) -> list[list[tuple[Direction, int]]]:
    """(direction, example index) for every slot of every step, fixed by the seed alone, so a
    resumed run draws exactly the batches the uninterrupted run would have drawn. Each slot
    is content with probability content_fraction; within a direction examples come in
    reshuffled passes (every example once per pass)."""
    has_content = sizes.get(Direction.CONTENT, 0) > 0
    has_behaviour = sizes.get(Direction.BEHAVIOUR, 0) > 0
    if not has_content and not has_behaviour:
        raise ValueError("no training examples (or none fits max_seq_length)")
    if content_fraction == 1 and not has_content:
        raise ValueError("content_fraction is 1 but no content example is available")
    if content_fraction == 0 and not has_behaviour:
        raise ValueError("content_fraction is 0 but no behaviour example is available")
    # A mixed run on a dataset with one direction trains on what exists.
    if not has_content:
        content_fraction = 0.0
    elif not has_behaviour:
        content_fraction = 1.0
    available = [d for d in Direction if sizes.get(d, 0) > 0]
    rng = random.Random(seed)
    streams = {d: _passes(sizes[d], rng) for d in available}
    schedule = []
    for _ in range(steps):
        batch = []
        for _ in range(batch_size):
            direction = (
                Direction.CONTENT if rng.random() < content_fraction else Direction.BEHAVIOUR
            )
            batch.append((direction, next(streams[direction])))
        schedule.append(batch)
    return schedule


def _passes(size: int, rng: random.Random) -> Iterator[int]:
    order = list(range(size))
    while True:
        rng.shuffle(order)
        yield from order


def collate(batch: Sequence[TokenizedExample], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-pad to the longest row: ids with pad_id, labels with IGNORE_INDEX, mask with 0."""
    width = max(len(example.input_ids) for example in batch)
    ids, labels, mask = [], [], []
    for example in batch:
        padding = width - len(example.input_ids)
        ids.append(example.input_ids + [pad_id] * padding)
        labels.append(example.labels + [IGNORE_INDEX] * padding)
        mask.append([1] * len(example.input_ids) + [0] * padding)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
