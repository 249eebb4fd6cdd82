"""Decoding constrained to a regular expression, with jump-forward, for the transformers backend.

llguidance (a Rust grammar engine; vLLM offers it as one of its structured-output
backends) tells, after each token, which tokens may
come next and which ones are forced. A forced token needs no sampling, so the decoder feeds
all the tokens a step forces together with the sampled token in one forward pass: on the
description language ("colors:", " (", "," between channels, "0." of a box corner ...) that
saves a forward pass for roughly every other token. Rows of a batch advance together; a row
that feeds fewer tokens in a step is padded on the left of that step, hidden by the attention
mask, so each row reads exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch

from services.common.lru import LruCache
from services.describer.backends.common import output_cache


class GrammarError(ValueError):
    """The expression does not compile to a grammar."""


class GrammarCompiler:
    """Matchers for one tokenizer; an expression is compiled once while it stays among the
    ``MAX_TEMPLATES`` most recently used, and copied per row."""

    MAX_TEMPLATES = 256
    """Compiled expressions kept: the description grammar comes in one form per field set
    and one per history palette pinned into it (``grammar.description_regex``)."""

    def __init__(self, hf_tokenizer: Any, *, vocab_size: int, eos_ids: Sequence[int]) -> None:
        # Wrapping the tokenizer costs ~1 s (llguidance reads the whole vocabulary): once.
        self._tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=vocab_size, eos_token=list(eos_ids)
        )
        self.vocab_size = vocab_size
        self._templates: LruCache[llguidance.LLMatcher] = LruCache(self.MAX_TEMPLATES)

    def matcher(self, regex: str) -> llguidance.LLMatcher:
        template = self._templates.get(regex)
        if template is None:
            grammar = llguidance.LLMatcher.grammar_from_regex(regex)
            template = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
            if template.is_error():
                raise GrammarError(f"the expression does not compile: {template.get_error()}")
            self._templates.put(regex, template)
        return template.deep_copy()


@dataclass
class DecodedBatch:
    """What a constrained decode produced, and what its KV cache holds (for reuse)."""

    tokens: list[list[int]]
    """Per row, the tokens generated (forced ones included; end-of-sequence left out)."""
    layout: list[list[int]]
    """Per row, the token at each position the cache holds (pads included)."""
    mask: list[list[int]]
    """Per row, 1 where the position holds a token the row attends to."""
    cache: Any
    forward_passes: int = 0
    forced_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    """Rows whose matcher failed (a bug, never the model's fault): its message per row."""


def decode_constrained(
    model: Any,
    *,
    layout: list[list[int]],
    mask: list[list[int]],
    cache: Any,
    cache_kwarg: str,
    matchers: list[llguidance.LLMatcher],
    max_new_tokens: int,
    temperature: float,
    pad_id: int,
    eos_ids: Sequence[int],
) -> DecodedBatch:
    """Continue each row of ``layout`` (its tokens, pads included, with ``mask`` 1 where a
    row attends) under its own matcher, until the grammar ends, the model ends it (an
    end-of-sequence token the grammar allows) or ``max_new_tokens`` tokens. ``cache`` (or
    None) holds the first positions of every row already.
    """
    cached = cache.get_seq_length() if cache is not None else 0
    rows = len(matchers)
    device = model.device
    eos = set(eos_ids)
    generated: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    errors: list[str] = []
    forced_count = 0
    # The tokens each row feeds in the next forward pass: first its prompt (the part the
    # cache lacks) and what the grammar forces before the first sampled token.
    pending: list[list[int]] = []
    for row, matcher in enumerate(matchers):
        prompt_tail = [
            token
            for token, seen in zip(layout[row][cached:], mask[row][cached:], strict=True)
            if seen
        ]
        forced = matcher.compute_ff_tokens()
        if forced and not matcher.consume_tokens(forced):
            raise GrammarError(matcher.get_error())
        forced_count += len(forced)
        generated[row].extend(forced)
        pending.append(prompt_tail + forced)
    layout = [list(row[:cached]) for row in layout]
    mask = [list(row[:cached]) for row in mask]
    bitmask = llguidance.numpy.allocate_token_bitmask(rows, vocab_size(model))
    passes = 0
    while True:
        width = max(len(tokens) for tokens in pending)
        step_ids = [[pad_id] * (width - len(tokens)) + tokens for tokens in pending]
        step_mask = [[0] * (width - len(tokens)) + [1] * len(tokens) for tokens in pending]
        for row in range(rows):
            layout[row].extend(step_ids[row])
            mask[row].extend(step_mask[row])
        full_mask = torch.tensor(mask, dtype=torch.long, device=device)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]
        with torch.inference_mode():
            output = model(
                input_ids=torch.tensor(step_ids, dtype=torch.long, device=device),
                attention_mask=full_mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **({cache_kwarg: cache} if cache is not None else {}),
            )
        passes += 1
        cache = output_cache(output)
        logits = output.logits[:, -1, :].float()
        pending = [[] for _ in range(rows)]
        active = [row for row in range(rows) if not done[row]]
        for row in active:
            llguidance.numpy.fill_next_token_bitmask(matchers[row], bitmask, row)
        allowed = np.unpackbits(bitmask[active].view(np.uint8), axis=1, bitorder="little")
        allowed_mask = torch.from_numpy(allowed[:, : logits.shape[1]].astype(bool))
        chosen = _choose(logits[active].cpu(), allowed_mask, temperature)
        for row, token in zip(active, chosen, strict=True):
            matcher = matchers[row]
            if token in eos:
                done[row] = True
                continue
            if not matcher.consume_token(token):
                errors.append(matcher.get_error())
                done[row] = True
                continue
            generated[row].append(token)
            forced = matcher.compute_ff_tokens() if not matcher.is_stopped() else []
            if forced and not matcher.consume_tokens(forced):
                errors.append(matcher.get_error())
                done[row] = True
                continue
            forced_count += len(forced)
            generated[row].extend(forced)
            if matcher.is_stopped() or len(generated[row]) >= max_new_tokens:
                # Nothing more to read: its last tokens never need a forward pass.
                done[row] = True
                continue
            pending[row] = [token, *forced]
        if all(done):
            break
    return DecodedBatch(
        tokens=[tokens[:max_new_tokens] for tokens in generated],
        layout=layout,
        mask=mask,
        cache=cache,
        forward_passes=passes,
        forced_tokens=forced_count,
        errors=errors,
    )


def _choose(logits: torch.Tensor, allowed: torch.Tensor, temperature: float) -> list[int]:
    logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature <= 0:
        return [int(token) for token in logits.argmax(-1).tolist()]
    probabilities = torch.softmax(logits / temperature, dim=-1)
    return [int(token) for token in torch.multinomial(probabilities, 1).squeeze(-1).tolist()]


def vocab_size(model: Any) -> int:
    """Rows of the model's output layer: the width of its logits (and of a token mask)."""
    return int(model.get_output_embeddings().weight.shape[0])
