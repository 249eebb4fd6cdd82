"""The transformers backend on a tiny random Llama (exactness) and on the real SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common import prompts
from services.common.contracts import KPI_LEVELS, Context, KpiLevel, KpiTarget
from services.common.verbalization import render
from services.describer.backends import LlmBackend
from services.describer.backends.transformers_backend import TransformersBackend, model_version


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend.load(tiny_model_dir, device="cpu", max_batch_size=2)


def manual_logprob(backend: TransformersBackend, prompt: str, continuation: str) -> float:
    """log P(continuation | prompt) from one unpadded forward pass over the joint encoding,
    scoring the tokens after the prompt's own encoding (no merge across the boundary)."""
    tokenizer, model = backend._tokenizer, backend._model
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    assert joint[: len(prompt_ids)] == prompt_ids, "test case must not merge across the boundary"
    with torch.inference_mode():
        logits = model(torch.tensor([joint])).logits[0].float().log_softmax(-1)
    return sum(logits[t - 1, joint[t]].item() for t in range(len(prompt_ids), len(joint)))


def behaviour_prompts(
    backend: TransformersBackend, context: Context, texts: list[str]
) -> list[str]:
    return [
        backend.chat_prompt(prompts.behaviour_messages(context, "likes", text))
        + prompts.BEHAVIOUR_ANSWER_PREFIX
        for text in texts
    ]


def test_backend_satisfies_the_protocol(tiny: TransformersBackend) -> None:
    assert isinstance(tiny, LlmBackend)


def test_pad_token_falls_back_to_eos(tiny: TransformersBackend) -> None:
    assert tiny._tokenizer.pad_token == "<|im_end|>"
    assert tiny._tokenizer.padding_side == "left"


def test_continuation_logprobs_match_a_manual_forward_pass(
    tiny: TransformersBackend, context: Context, verbalizations: list[Any]
) -> None:
    # Prompts of different lengths (padding), more prompts than max_batch_size (chunking),
    # and continuations of one and of several tokens (the KV-cache tail pass).
    texts = [render(v) for v in verbalizations] + ["", "colors: red (1,2,3) 4%"]
    prompt_texts = behaviour_prompts(tiny, context, texts)
    continuations = [prompts.level_continuation(level) for level in KPI_LEVELS]
    continuations += [" high and dark, saturated", " runner"]
    assert max(len(tiny._token_ids(c)) for c in continuations) > 3

    scores = tiny.continuation_logprobs(prompt_texts, continuations)

    assert len(scores) == len(prompt_texts)
    for prompt, row in zip(prompt_texts, scores, strict=True):
        expected = [manual_logprob(tiny, prompt, c) for c in continuations]
        assert row == pytest.approx(expected, abs=1e-4)


def test_continuation_merging_with_the_prompt_end_is_scored_as_one_token(
    tiny: TransformersBackend,
) -> None:
    # "level: " + "high" encodes as [..., ":", "Ġhigh"], not [..., ":", "Ġ", "high"]: the
    # prompt's trailing space token must not be scored, the merged token must.
    prompt, continuation = "caption: a runner\nlevel: ", "high"
    prompt_ids = tiny._token_ids(prompt)
    joint = tiny._token_ids(prompt + continuation)
    assert joint[:-1] == prompt_ids[:-1] and len(joint) == len(prompt_ids)  # space merged
    with torch.inference_mode():
        logits = tiny._model(torch.tensor([joint])).logits[0].float().log_softmax(-1)
    expected = sum(logits[t - 1, joint[t]].item() for t in range(len(prompt_ids) - 1, len(joint)))

    [[score]] = tiny.continuation_logprobs([prompt], [continuation])

    assert score == pytest.approx(expected, abs=1e-4)


def test_continuation_logprobs_refuse_empty_continuations(tiny: TransformersBackend) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        tiny.continuation_logprobs(["level:"], [" low", ""])
    assert tiny.continuation_logprobs(["level:"], []) == [[]]


def test_generate_is_the_same_batched_and_alone(
    tiny: TransformersBackend, context: Context
) -> None:
    messages = [prompts.describe_messages(context, KpiTarget(level=level)) for level in KpiLevel]
    prompt_texts = [tiny.chat_prompt(m) for m in messages] + ["caption:"]

    batched = tiny.generate(prompt_texts, max_new_tokens=12)
    alone = [tiny.generate([p], max_new_tokens=12)[0] for p in prompt_texts]

    assert batched == alone
    assert all(batched)


def test_generate_reuses_the_shared_prefix_without_changing_the_output(
    tiny_model_dir: Path, context: Context
) -> None:
    # The describe loop: each prompt is the previous prompt, its answer and the next key.
    reusing = TransformersBackend.load(tiny_model_dir, device="cpu")
    base = reusing.chat_prompt(prompts.describe_messages(context, KpiTarget()))
    text = ""
    for key in prompts.DESCRIBE_FIELDS:
        prompt = base + text + f"{key}:"
        fresh = TransformersBackend.load(tiny_model_dir, device="cpu")
        [expected] = fresh.generate([prompt], max_new_tokens=6)
        [answer] = reusing.generate([prompt], max_new_tokens=6)
        assert answer == expected
        assert reusing._last is not None
        assert len(reusing._last.layout[0]) > len(reusing._token_ids(base))
        text += f"{key}:{answer}\n"


def decode_lines_as_alone(
    tiny_model_dir: Path, bases: list[str], lines: list[tuple[str, int, int]]
) -> list[int]:
    """Fields decoding of a batch of ``bases``: per ``(key, samples, max_new_tokens)`` each
    row grows by the key, the model's answer (the first sample's) and a newline. Asserts
    that every answer equals its prompt decoded alone from scratch (greedy samples are
    deterministic), and returns the input columns the model ran per call (-1: no cache)."""
    reusing = TransformersBackend.load(tiny_model_dir, device="cpu", max_batch_size=8)
    fresh = TransformersBackend.load(tiny_model_dir, device="cpu", max_batch_size=8)
    reused: list[int] = []
    original = reusing._reuse

    def spy(rows: list[list[int]]) -> Any:
        result = original(rows)
        reused.append(-1 if result is None else result[0].shape[1] - result[2].get_seq_length())
        return result

    reusing._reuse = spy  # type: ignore[method-assign]
    texts = [""] * len(bases)
    for key, samples, max_new_tokens in lines:
        batch = [base + text + f"{key}:" for base, text in zip(bases, texts, strict=True)]
        answers = reusing.generate(batch, max_new_tokens=max_new_tokens, samples=samples)
        alone = []
        for prompt in batch:
            fresh._last = None  # each row alone, from scratch
            alone.extend(fresh.generate([prompt], max_new_tokens=max_new_tokens) * samples)
        assert answers == alone
        texts = [f"{text}{key}:{answers[row * samples]}\n" for row, text in enumerate(texts)]
    return reused


def test_a_batch_reuses_each_rows_prefix_without_changing_any_output(
    tiny: TransformersBackend, tiny_model_dir: Path, context: Context
) -> None:
    # Rows of different lengths, so the reused cache has padding inside some rows.
    bases = [
        tiny.chat_prompt(prompts.describe_messages(context, KpiTarget(level=level)))
        for level in KpiLevel
    ] + [
        tiny.chat_prompt(
            prompts.describe_messages(
                context.model_copy(
                    update={"text": "a much longer post text than the others, by far"}
                ),
                KpiTarget(),
            )
        )
    ]
    lines = [(key, 1, 4 + 3 * index) for index, key in enumerate(prompts.DESCRIBE_FIELDS)]

    reused = decode_lines_as_alone(tiny_model_dir, bases, lines)

    # No cache before the first line; from then on only the new tails ran (a few tokens of
    # answer and key per row, not the ~100-token prompts).
    assert reused[0] == -1
    assert all(0 < columns < 40 for columns in reused[1:]), reused


def test_samples_share_their_prompts_cache_and_decode_as_that_prompt_alone(
    tiny: TransformersBackend, tiny_model_dir: Path, context: Context
) -> None:
    # An averaged colours line: a sampled line between greedy ones. The copied cache (fresh
    # on the first line, reused on the last) changes nothing.
    bases = [
        tiny.chat_prompt(prompts.describe_messages(context, KpiTarget(level=level)))
        for level in (KpiLevel.LOW, KpiLevel.HIGH)
    ]

    reused = decode_lines_as_alone(
        tiny_model_dir, bases, [("colors", 3, 6), ("tones", 1, 6), ("objects", 2, 6)]
    )

    # The first line read the prompts (once each); every later line ran only its tail.
    assert reused[0] == -1
    assert all(0 < columns < 40 for columns in reused[1:]), reused


def test_samples_differ_when_sampled(tiny: TransformersBackend) -> None:
    torch.manual_seed(1)
    drawn = tiny.generate(["caption:", "colors:"], max_new_tokens=8, temperature=1.5, samples=4)
    assert len(drawn) == 8
    assert len(set(drawn[:4])) > 1


def test_generate_cuts_at_the_first_stop_string(tiny: TransformersBackend) -> None:
    [free] = tiny.generate(["caption:"], max_new_tokens=20)
    stop = free.strip()[3]  # a character the greedy continuation is known to produce
    [stopped] = tiny.generate(["caption:"], max_new_tokens=20, stop=[stop])

    assert stopped == free[: free.index(stop)]


def test_generate_samples_when_temperature_is_positive(tiny: TransformersBackend) -> None:
    torch.manual_seed(1)
    samples = tiny.generate(["caption:"] * 4, max_new_tokens=8, temperature=1.5)
    assert len(set(samples)) > 1


def test_chat_prompt_uses_the_chat_template(tiny: TransformersBackend) -> None:
    text = tiny.chat_prompt([{"role": "user", "content": "account: nike"}])
    assert text == "<|im_start|>user\naccount: nike<|im_end|>\n<|im_start|>assistant\n"


def test_chat_prompt_without_template_is_a_plain_transcript_with_bos(
    tiny_model_dir: Path,
) -> None:
    backend = TransformersBackend.load(tiny_model_dir, device="cpu")
    backend._tokenizer.chat_template = None
    text = backend.chat_prompt([{"role": "user", "content": "account: nike"}])
    assert text.startswith("<|im_start|>### user\naccount: nike\n")
    assert text.endswith("### assistant\n")


def test_load_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        TransformersBackend.load(tmp_path)


def test_model_version_follows_the_manifest_or_the_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    by_files = model_version(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    assert model_version(tmp_path) != by_files

    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"a": "1"}}))
    by_manifest = model_version(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights-3")
    assert model_version(tmp_path) == by_manifest  # the manifest speaks for the folder
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"a": "2"}}))
    assert model_version(tmp_path) != by_manifest
    assert len(by_manifest) == 12


# --- the real SmolLM2 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> TransformersBackend:
    return TransformersBackend.load(smollm2_dir, device="cpu", dtype="float32")


def test_smollm2_level_scores_match_a_manual_forward_pass(
    smollm2: TransformersBackend, context: Context, verbalizations: list[Any]
) -> None:
    prompt_texts = behaviour_prompts(smollm2, context, [render(verbalizations[1])])
    continuations = [prompts.level_continuation(level) for level in KPI_LEVELS]

    [row] = smollm2.continuation_logprobs(prompt_texts, continuations)

    expected = [manual_logprob(smollm2, prompt_texts[0], c) for c in continuations]
    assert row == pytest.approx(expected, abs=1e-3)
    assert smollm2.info.name == "smollm2-135m-instruct"
