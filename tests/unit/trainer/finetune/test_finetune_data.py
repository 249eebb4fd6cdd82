"""Examples -> prompts from the shared templates -> token ids with the loss on the target only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from services.common import prompts
from services.common.contracts import KpiTarget
from services.trainer.finetune.data import (
    IGNORE_INDEX,
    batch_schedule,
    collate,
    load_examples,
    prepare,
    to_prompt_target,
    tokenize,
)
from services.trainer.ingest.dataset import Direction


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def _target_text(tokenizer: Any, labels: list[int]) -> str:
    return str(tokenizer.decode([token for token in labels if token != IGNORE_INDEX]))


def test_content_labels_cover_exactly_the_verbalization(tokenizer: Any, dataset_dir: Path) -> None:
    example = load_examples(dataset_dir, "train")[Direction.CONTENT][0]
    pair = to_prompt_target(example, tokenizer)
    tokenized = tokenize(pair, tokenizer)

    assert pair.target == example.verbalization
    assert _target_text(tokenizer, tokenized.labels) == example.verbalization + "<|im_end|>"
    masked = tokenized.labels.index(next(t for t in tokenized.labels if t != IGNORE_INDEX))
    assert tokenizer.decode(tokenized.input_ids[:masked]) == pair.prompt
    assert all(label == IGNORE_INDEX for label in tokenized.labels[:masked])
    # The prompt is the describer's compact one for tuned checkpoints: one system line and
    # the request, no worked examples.
    target = KpiTarget(level=example.level)
    assert pair.prompt.endswith("goal: high likes<|im_end|>\n<|im_start|>assistant\n")
    compact = prompts.describe_messages(example.context, target, few_shot=False)
    assert compact[0]["content"] in pair.prompt
    assert pair.prompt.count("<|im_start|>user") == 1


def test_few_shot_content_prompt_is_the_base_models_prompt(
    tokenizer: Any, dataset_dir: Path
) -> None:
    example = load_examples(dataset_dir, "train")[Direction.CONTENT][0]
    few_shot = to_prompt_target(example, tokenizer, few_shot=True)
    compact = to_prompt_target(example, tokenizer)

    messages = prompts.describe_messages(example.context, KpiTarget(level=example.level))
    assert few_shot.prompt == prompts.chat_prompt(tokenizer, messages)
    assert few_shot.target == compact.target
    assert len(tokenize(compact, tokenizer).input_ids) < len(
        tokenize(few_shot, tokenizer).input_ids
    )


def test_behaviour_target_is_the_level_word_after_the_answer_prefix(
    tokenizer: Any, dataset_dir: Path
) -> None:
    example = load_examples(dataset_dir, "train")[Direction.BEHAVIOUR][1]
    pair = to_prompt_target(example, tokenizer)
    tokenized = tokenize(pair, tokenizer)

    assert pair.prompt.endswith("<|im_start|>assistant\n" + prompts.BEHAVIOUR_ANSWER_PREFIX)
    # The level word alone: an end-of-turn token would take half of the loss of the answer.
    assert _target_text(tokenizer, tokenized.labels) == f" {example.level.value}"
    assert len(tokenized.labels) == len(tokenized.input_ids)


def test_collate_pads_right_and_masks_the_padding() -> None:
    from services.trainer.finetune.data import TokenizedExample

    rows = [TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([4], [4])]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"] == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"] == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"] == [[1, 1, 1], [1, 0, 0]]


def test_too_long_examples_are_skipped_not_truncated(tokenizer: Any, dataset_dir: Path) -> None:
    examples = load_examples(dataset_dir, "train")
    prepared = prepare(examples, tokenizer, max_seq_length=300, few_shot=True)
    assert prepared.examples[Direction.CONTENT] == []  # the few-shot content prompt is longer
    assert len(prepared.examples[Direction.BEHAVIOUR]) == len(examples[Direction.BEHAVIOUR])
    assert prepared.skipped_too_long == len(examples[Direction.CONTENT])


def test_schedule_is_fixed_by_the_seed_and_mixes_directions_by_the_ratio() -> None:
    sizes = {Direction.CONTENT: 20, Direction.BEHAVIOUR: 20}
    schedule = batch_schedule(sizes, content_fraction=0.25, batch_size=8, steps=100, seed=3)
    again = batch_schedule(sizes, content_fraction=0.25, batch_size=8, steps=100, seed=3)
    other = batch_schedule(sizes, content_fraction=0.25, batch_size=8, steps=100, seed=4)
    assert schedule == again != other
    counts = Counter(direction for batch in schedule for direction, _ in batch)
    assert 0.2 < counts[Direction.CONTENT] / 800 < 0.3
    # Every example is used once per pass: the first 20 content draws cover all 20.
    content = [i for batch in schedule for d, i in batch if d is Direction.CONTENT]
    assert sorted(content[:20]) == list(range(20))


def test_schedule_refuses_a_direction_that_has_no_examples() -> None:
    with pytest.raises(ValueError, match="no content example"):
        batch_schedule(
            {Direction.CONTENT: 0, Direction.BEHAVIOUR: 5},
            content_fraction=1.0,
            batch_size=2,
            steps=1,
            seed=0,
        )


def test_prompts_render_exactly_as_the_describer_renders_them(
    tiny_model_dir: Path, tokenizer: Any, dataset_dir: Path
) -> None:
    # A cross-service check belongs in tests: the services themselves never import a sibling.
    from services.describer.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(tiny_model_dir, device="cpu")
    example = load_examples(dataset_dir, "train")[Direction.BEHAVIOUR][0]
    messages = prompts.behaviour_messages(example.context, "likes", example.verbalization)
    assert prompts.chat_prompt(tokenizer, messages) == backend.chat_prompt(messages)
    tokenizer.chat_template = None
    backend._tokenizer.chat_template = None
    assert prompts.chat_prompt(tokenizer, messages) == backend.chat_prompt(messages)
    assert prompts.chat_prompt(tokenizer, messages).startswith("<|im_start|>### system")
