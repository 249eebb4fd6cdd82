"""Dataset examples -> (prompt, target) text with the shared prompts -> token ids whose labels
cover only the target, so the loss teaches the answer and never the prompt."""

from __future__ import annotations

import random
import re
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from services.common import prompts
from services.common.contracts import KPI_LEVELS, KpiTarget
from services.common.hashing import file_sha256
from services.common.history import HistoryStore
from services.common.verbalization import parse
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
    weights: list[float] = field(default_factory=list)
    """Loss weight of each position (0 where the label is IGNORE_INDEX); empty: all 1."""
    cell: Hashable = None
    """What balanced sampling balances over: (account, level) for content, the level for
    behaviour."""


class TokenKind(IntEnum):
    """What a target token spells, for its loss weight (see ``TokenWeights``)."""

    OTHER = 0
    WORD = 1
    """A colour name, tone word or object label: the look itself."""
    RGB = 2
    COVERAGE = 3
    DECIMAL = 4
    """An object's confidence or box corner: detector noise the context cannot predict."""


@dataclass(frozen=True)
class TokenWeights:
    word: float = 1.0
    rgb: float = 1.0
    coverage: float = 1.0
    decimal: float = 1.0
    other: float = 1.0

    def of(self, kind: TokenKind) -> float:
        return {
            TokenKind.WORD: self.word,
            TokenKind.RGB: self.rgb,
            TokenKind.COVERAGE: self.coverage,
            TokenKind.DECIMAL: self.decimal,
            TokenKind.OTHER: self.other,
        }[kind]


_COLOR_ITEM = re.compile(r"(?P<name>[a-z][a-z0-9 _-]*?) \((?P<rgb>[\d,]+)\) (?P<pct>\d+%)")
_OBJECT_ITEM = re.compile(r"(?P<label>[a-z][a-z0-9 _-]*?) (?P<conf>[\d.]+) (?P<box>\[[\d.,]+\])")
_TONE_WORD = re.compile(r"[a-z-]+")


def character_kinds(target: str) -> list[TokenKind]:
    """The kind of every character of a description in its text form."""
    kinds = [TokenKind.OTHER] * len(target)

    def mark(start: int, end: int, kind: TokenKind) -> None:
        kinds[start:end] = [kind] * (end - start)

    offset = 0
    for line in target.split("\n"):
        key, _, _ = line.partition(": ")
        body = offset + len(key) + 2
        value = line[len(key) + 2 :]
        if key == "colors":
            for match in _COLOR_ITEM.finditer(value):
                mark(body + match.start("name"), body + match.end("name"), TokenKind.WORD)
                mark(body + match.start("rgb"), body + match.end("rgb"), TokenKind.RGB)
                mark(body + match.start("pct"), body + match.end("pct"), TokenKind.COVERAGE)
        elif key == "tones":
            for match in _TONE_WORD.finditer(value):
                mark(body + match.start(), body + match.end(), TokenKind.WORD)
        elif key == "objects":
            for match in _OBJECT_ITEM.finditer(value):
                mark(body + match.start("label"), body + match.end("label"), TokenKind.WORD)
                mark(body + match.start("conf"), body + match.end("conf"), TokenKind.DECIMAL)
                mark(body + match.start("box"), body + match.end("box"), TokenKind.DECIMAL)
        offset += len(line) + 1
    return kinds


def resolve_dataset_dir(path: Path) -> Path:
    """A dataset root (with a ``latest`` pointer) or one version folder -> the version folder."""
    pointer = path / LATEST
    if pointer.is_file():
        return path / pointer.read_text(encoding="utf-8").strip()
    return path


def dataset_digest(version_dir: Path) -> str:
    """The SHA-256 of a dataset version's manifest: what a checkpoint names as its data."""
    return file_sha256(version_dir / MANIFEST)


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
    example: InstructionExample,
    tokenizer: Any,
    *,
    few_shot: bool = False,
    history: HistoryStore | None = None,
    leave_out: bool = False,
) -> PromptTarget:
    """Content simulation: target is the verbalization text, after the compact prompt (or the
    few-shot one). Behaviour simulation: the prompt ends with ``level:`` (where the describer
    scores levels) and the target is the level word.

    With ``history`` (retrieval augmentation) the content prompt carries the account's past
    look at the target level and the behaviour prompt its past look at every level.
    ``leave_out``: the example is one of the history's own posts (a training row) and is
    taken out of it, so that the model learns to use the history, not to copy the answer."""
    look = parse(example.verbalization) if history is not None and leave_out else None
    if example.direction is Direction.CONTENT:
        line = (
            history.line(example.context.account, example.kpi_name, example.level, leave_out=look)
            if history is not None
            else None
        )
        messages = prompts.describe_messages(
            example.context,
            KpiTarget(name=example.kpi_name, level=example.level),
            few_shot=few_shot,
            history=line,
        )
        return PromptTarget(
            example.direction, prompts.chat_prompt(tokenizer, messages), example.verbalization
        )
    lines = level_history_lines(history, example, leave_out=look)
    messages = prompts.behaviour_messages(
        example.context, example.kpi_name, example.verbalization, lines
    )
    return PromptTarget(
        example.direction,
        prompts.chat_prompt(tokenizer, messages) + prompts.BEHAVIOUR_ANSWER_PREFIX,
        prompts.level_continuation(example.level),
    )


def level_history_lines(
    history: HistoryStore | None, example: InstructionExample, *, leave_out: Any = None
) -> list[str]:
    """The behaviour prompt's history: one line per level the account has posts at."""
    if history is None:
        return []
    lines = []
    for level in KPI_LEVELS:
        summary = history.summary(
            example.context.account,
            example.kpi_name,
            level,
            leave_out=leave_out if level is example.level else None,
        )
        if summary is not None:
            lines.append(summary.line(level))
    return lines


def tokenize(
    pair: PromptTarget, tokenizer: Any, weights: TokenWeights | None = None
) -> TokenizedExample:
    """Encode prompt + target together, as the describer does when it scores: BPE merges across
    the boundary, so the target's tokens are those of the joint encoding past the longest
    prefix it shares with the prompt alone. A content target is followed by the end-of-turn
    token, so that the model learns to stop where the describer's generation stops; a
    behaviour target is the level word alone (the describer reads only that word, and an
    end-of-turn token would take half of a two-token target's loss)."""
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
    if pair.direction is Direction.CONTENT and tokenizer.eos_token_id is not None:
        input_ids.append(int(tokenizer.eos_token_id))
    labels = [IGNORE_INDEX] * shared + input_ids[shared:]
    token_weights = [0.0] * shared + [1.0] * (len(input_ids) - shared)
    if weights is not None and pair.direction is Direction.CONTENT:
        kinds = _target_token_kinds(tokenizer, pair, shared, len(joint))
        for position, kind in kinds.items():
            token_weights[position] = weights.of(kind)
    return TokenizedExample(input_ids=input_ids, labels=labels, weights=token_weights)


def _target_token_kinds(
    tokenizer: Any, pair: PromptTarget, shared: int, length: int
) -> dict[int, TokenKind]:
    """Target position -> the kind of the first non-space character the token spells; empty
    for a tokenizer without character offsets (every token keeps weight 1)."""
    try:
        offsets = tokenizer(
            pair.prompt + pair.target, add_special_tokens=False, return_offsets_mapping=True
        )["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return {}
    text = pair.prompt + pair.target
    start = len(pair.prompt)
    kinds = character_kinds(pair.target)
    result: dict[int, TokenKind] = {}
    for position in range(shared, min(length, len(offsets))):
        begin, end = offsets[position]
        chars = [i for i in range(max(begin, start), end) if not text[i].isspace()]
        if chars:
            result[position] = kinds[chars[0] - start]
    return result


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
    history: HistoryStore | None = None,
    leave_out: bool = False,
    weights: TokenWeights | None = None,
) -> PreparedSplit:
    prepared: dict[Direction, list[TokenizedExample]] = {}
    skipped = 0
    for direction, items in examples.items():
        kept = []
        for example in items:
            pair = to_prompt_target(
                example, tokenizer, few_shot=few_shot, history=history, leave_out=leave_out
            )
            tokenized = tokenize(pair, tokenizer, weights)
            if len(tokenized.input_ids) > max_seq_length:
                skipped += 1
                continue
            cell: Hashable = (
                (example.context.account, example.level.value)
                if direction is Direction.CONTENT
                else example.level.value
            )
            kept.append(
                TokenizedExample(tokenized.input_ids, tokenized.labels, tokenized.weights, cell)
            )
        prepared[direction] = kept
    return PreparedSplit(examples=prepared, skipped_too_long=skipped)


def batch_schedule(
    sizes: dict[Direction, int],
    *,
    content_fraction: float,
    batch_size: int,
    steps: int,
    seed: int,
    cells: dict[Direction, Sequence[Hashable]] | None = None,
    one_direction_per_batch: bool = False,
) -> list[list[tuple[Direction, int]]]:
    """(direction, example index) for every slot of every step, fixed by the seed alone, so a
    resumed run draws exactly the batches the uninterrupted run would have drawn.

    A slot (or, with ``one_direction_per_batch``, a whole batch) is content with probability
    content_fraction. Without ``cells`` examples come in reshuffled passes over the direction
    (every example once per pass). With ``cells`` (a key per example), sampling is balanced:
    cells come in reshuffled passes over the cells, and each cell's examples in reshuffled
    passes of their own, so a rare (brand, level) cell is seen as often as a common one."""
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
    streams = {
        d: _balanced(cells[d], rng) if cells is not None else _passes(sizes[d], rng)
        for d in available
    }
    schedule = []
    for _ in range(steps):
        batch = []
        direction = Direction.CONTENT
        for slot in range(batch_size):
            if slot == 0 or not one_direction_per_batch:
                direction = (
                    Direction.CONTENT if rng.random() < content_fraction else Direction.BEHAVIOUR
                )
            batch.append((direction, next(streams[direction])))
        schedule.append(batch)
    return schedule


def _balanced(cells: Sequence[Hashable], rng: random.Random) -> Iterator[int]:
    members: dict[Hashable, list[int]] = {}
    for index, cell in enumerate(cells):
        members.setdefault(cell, []).append(index)
    keys = sorted(members, key=repr)  # a fixed order for the seed to shuffle
    within = {key: _passes(len(members[key]), rng) for key in keys}
    for key in _cycle_shuffled(keys, rng):
        yield members[key][next(within[key])]


def _cycle_shuffled(keys: list[Hashable], rng: random.Random) -> Iterator[Hashable]:
    order = list(keys)
    while True:
        rng.shuffle(order)
        yield from order


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


def collate_weights(batch: Sequence[TokenizedExample]) -> list[list[float]]:
    """Each row's loss weights, right-padded with 0 like ``collate``'s labels."""
    width = max(len(example.input_ids) for example in batch)
    rows = []
    for example in batch:
        weights = example.weights or [
            0.0 if label == IGNORE_INDEX else 1.0 for label in example.labels
        ]
        rows.append(weights + [0.0] * (width - len(weights)))
    return rows
