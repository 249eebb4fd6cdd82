"""Fixtures of the fine-tuning tests: a tiny random Llama with a BPE tokenizer trained here on
the shared prompts (the approach of tests/unit/describer/conftest.py), and a small synthetic
instruction dataset whose answers follow from the context, so a model can learn them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common import prompts
from services.common.contracts import Context, KpiLevel, KpiTarget
from services.trainer.ingest.dataset import FORMAT_VERSION, MANIFEST, Direction

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

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
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 64) and a byte-level BPE trained on the prompts' text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tokenizer_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(config)
    # Larger-than-default weights make the output depend on the input, so that the small LoRA
    # updates can move it within a few dozen steps (a default-initialized model is near-uniform).
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
