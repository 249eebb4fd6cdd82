"""Constrained decoding with jump-forward in the transformers backend, on a tiny random Llama:
a random model under the grammar writes only descriptions, and feeding forced tokens in one
pass, batching and cache reuse change nothing against a plain step-by-step decode."""

from __future__ import annotations

import re
from pathlib import Path

import llguidance
import llguidance.numpy
import numpy as np
import pytest
import torch

from services.common import prompts
from services.common.colour_names import BASIC_COLORS
from services.common.contracts import Context, KpiLevel, KpiTarget
from services.common.verbalization import repair
from services.describer.backends.constrained import GrammarCompiler, GrammarError, vocab_size
from services.describer.backends.transformers_backend import TransformersBackend
from services.describer.grammar import description_regex

FIELDS = ("colors", "tones", "objects")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend.load(tiny_model_dir, device="cpu", max_batch_size=4)


def describe_prompt(backend: TransformersBackend, context: Context, level: KpiLevel) -> str:
    messages = prompts.describe_messages(context, KpiTarget(level=level), few_shot=False)
    return backend.chat_prompt(messages)


def reference_decode(backend: TransformersBackend, prompt: str, regex: str, budget: int) -> str:
    """Greedy under the grammar the slow way: the whole sequence re-read at every step, one
    row, no cache; forced tokens appended as the fast decoder appends them."""
    model, tokenizer = backend._model, backend._tokenizer
    compiler = GrammarCompiler(
        tokenizer,
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        eos_ids=backend._eos_ids,
    )
    matcher = compiler.matcher(regex)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated: list[int] = []
    bitmask = llguidance.numpy.allocate_token_bitmask(1, compiler.vocab_size)
    while len(generated) < budget and not matcher.is_stopped():
        forced = matcher.compute_ff_tokens()
        if forced:
            assert matcher.consume_tokens(forced)
            generated.extend(forced)
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids + generated])).logits[0, -1].float()
        llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
        allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[: logits.shape[0]]
        logits[torch.from_numpy(~allowed.astype(bool))] = float("-inf")
        token = int(logits.argmax())
        if token in backend._eos_ids:
            break
        assert matcher.consume_token(token)
        generated.append(token)
    return str(tokenizer.decode(generated[:budget], skip_special_tokens=True))


def test_a_random_model_under_the_grammar_writes_only_valid_descriptions(
    tiny: TransformersBackend, context: Context
) -> None:
    regex = description_regex(FIELDS)
    prompt = describe_prompt(tiny, context, KpiLevel.HIGH)

    texts = tiny.generate([prompt], max_new_tokens=400, temperature=1.0, samples=6, regex=regex)

    assert len(texts) == 6
    for text in texts:
        assert re.fullmatch(regex, text), text
        # All a regular expression cannot say: the sum of the coverages, the corners' order.
        unsaid = ("rescaled color coverages", "clipped or reordered box")
        assert all(r.startswith(unsaid) for r in repair(text).repairs), repair(text).repairs
    forward_passes, forced = tiny.last_decode_stats
    # The keys, brackets and separators were fed without sampling.
    assert forced > 0 and forward_passes > 0


def test_jump_forward_batching_and_cache_reuse_match_a_step_by_step_decode(
    tiny: TransformersBackend, context: Context
) -> None:
    regex = description_regex(FIELDS)
    # Different lengths (padding inside the batch) and more prompts than max_batch_size.
    contexts = [context, Context(account="x"), context.model_copy(update={"text": "a" * 40})]
    prompts_ = [describe_prompt(tiny, c, level) for c in contexts for level in KpiLevel][:5]
    expected = [reference_decode(tiny, prompt, regex, 120) for prompt in prompts_]

    batched = tiny.generate(prompts_, max_new_tokens=120, regex=regex)
    alone = [tiny.generate([prompt], max_new_tokens=120, regex=regex)[0] for prompt in prompts_]

    assert batched == expected
    assert alone == expected


def test_each_prompt_decodes_under_its_own_expression(
    tiny: TransformersBackend, context: Context
) -> None:
    pinned = description_regex(("colors",), pinned_rgb={name: (1, 2, 3) for name in BASIC_COLORS})
    free = description_regex(("colors",))
    # Five prompts: two chunks of max_batch_size 4, so the expressions must follow the chunks.
    contexts = [context, Context(account="x")]
    prompts_ = [describe_prompt(tiny, c, level) for c in contexts for level in KpiLevel][:5]
    regexes = [pinned, free, pinned, free, pinned]

    texts = tiny.generate(prompts_, max_new_tokens=120, temperature=1.0, samples=2, regex=regexes)

    for index, text in enumerate(texts):
        assert re.fullmatch(regexes[index // 2], text), text
        channels = re.findall(r"\(([0-9,]+)\)", text)
        pinned_row = regexes[index // 2] is pinned
        assert (set(channels) == {"1,2,3"}) == pinned_row, text
    expected = [reference_decode(tiny, p, r, 120) for p, r in zip(prompts_, regexes, strict=True)]
    assert tiny.generate(prompts_, max_new_tokens=120, regex=regexes) == expected


def test_compiled_expressions_are_kept_while_recently_used(
    tiny: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[str] = []
    compile_regex = llguidance.LLMatcher.grammar_from_regex

    def counting(regex: str) -> str:
        compiled.append(regex)
        return compile_regex(regex)

    monkeypatch.setattr(GrammarCompiler, "MAX_TEMPLATES", 2)
    monkeypatch.setattr(llguidance.LLMatcher, "grammar_from_regex", staticmethod(counting))
    compiler = GrammarCompiler(
        tiny._tokenizer, vocab_size=vocab_size(tiny._model), eos_ids=tiny._eos_ids
    )

    for regex in ["a+", "b+", "a+", "c+", "a+", "b+"]:
        compiler.matcher(regex)

    # "a+" stayed recent; "b+" was the least recently used when "c+" came, so it is compiled again.
    assert compiled == ["a+", "b+", "c+", "b+"]


def test_samples_read_their_prompt_once_and_decode_as_that_prompt_alone(
    tiny: TransformersBackend, context: Context
) -> None:
    # At a temperature this low a sample is the greedy choice at every step: each of the
    # samples, and the segment that continues the first one's cache, must be the reference.
    regex = description_regex(("colors",))
    prompt = describe_prompt(tiny, context, KpiLevel.HIGH)
    expected = reference_decode(tiny, prompt, regex, 120)

    tiny._last = None
    samples = tiny.generate([prompt], max_new_tokens=120, regex=regex, temperature=1e-6, samples=3)
    rest_regex = description_regex(("tones", "objects"), continues=True)
    continued = tiny.generate([prompt + samples[0]], max_new_tokens=120, regex=rest_regex)[0]
    tiny._last = None
    fresh = tiny.generate([prompt + samples[0]], max_new_tokens=120, regex=rest_regex)[0]

    assert samples == [expected] * 3
    assert continued == fresh
    assert continued.startswith("\ntones: ")


def test_a_segment_continues_from_the_cache_of_the_one_before(
    tiny: TransformersBackend, context: Context
) -> None:
    prompt = describe_prompt(tiny, context, KpiLevel.LOW)
    colors_regex = description_regex(("colors",))
    first = tiny.generate([prompt], max_new_tokens=120, regex=colors_regex)[0]
    rest_regex = description_regex(("tones", "objects"), continues=True)
    continued = tiny.generate([prompt + first], max_new_tokens=120, regex=rest_regex)[0]
    tiny._last = None  # the same prompt read from scratch
    fresh = tiny.generate([prompt + first], max_new_tokens=120, regex=rest_regex)[0]

    assert continued == fresh
    assert re.fullmatch(rest_regex, continued)


def test_the_token_budget_cuts_a_description(tiny: TransformersBackend, context: Context) -> None:
    prompt = describe_prompt(tiny, context, KpiLevel.MEDIUM)
    [text] = tiny.generate([prompt], max_new_tokens=5, regex=description_regex(FIELDS))
    assert len(tiny._tokenizer(text, add_special_tokens=False)["input_ids"]) <= 6
    assert "colors:".startswith(text) or text.startswith("colors:")


def test_an_expression_that_does_not_compile_is_a_typed_error(
    tiny: TransformersBackend, context: Context
) -> None:
    with pytest.raises(GrammarError):
        tiny.generate([describe_prompt(tiny, context, KpiLevel.LOW)], max_new_tokens=8, regex="(")
