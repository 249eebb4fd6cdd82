"""The interface every describer backend implements (in-process transformers now, vLLM later)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from services.common.contracts import ModelInfo
from services.common.prompts import ChatMessage
from services.common.serving_profile import ServingProfile


@runtime_checkable
class LlmBackend(Protocol):
    """A causal LM behind text in, text or log-probabilities out.

    Calls are blocking and not required to be thread-safe: the service runs them in a worker
    thread, one at a time.
    """

    @property
    def info(self) -> ModelInfo:
        """Model name and a version that changes whenever the weights or tokenizer change."""
        ...

    @property
    def few_shot_prompt(self) -> bool:
        """Whether content simulation prompts carry the format spec and worked examples (a
        base model needs them) or are the compact form a fine-tuned checkpoint learned."""
        ...

    @property
    def serving(self) -> ServingProfile:
        """How the checkpoint is served: retrieval-augmented prompts, and which reading of
        the behaviour direction (the checkpoint's ``boig_serving.json``; the base model's
        defaults without one)."""
        ...

    @property
    def supports_regex(self) -> bool:
        """Whether ``generate`` can constrain its output to a regular expression (``regex``);
        the describer then decodes descriptions in the 'structured' mode."""
        ...

    def chat_prompt(self, messages: list[ChatMessage]) -> str:
        """Render a conversation into prompt text ending in an open assistant turn, with the
        model's chat template where it has one. The text includes any BOS, so ``generate``
        and ``continuation_logprobs`` encode it without adding special tokens."""
        ...

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        samples: int = 1,
        regex: str | Sequence[str] | None = None,
    ) -> list[str]:
        """Continue each prompt (batched); each result is cut before the first stop string and
        ends at end-of-sequence or after ``max_new_tokens``. Temperature 0 is greedy.
        ``samples`` > 1: that many continuations of each prompt (sample at a temperature
        above 0), grouped by prompt: the first prompt's come first. ``regex`` (only where
        ``supports_regex``): every continuation is a prefix of a match of the expression,
        whole unless cut by ``max_new_tokens``; it ends where the match must end. One
        expression for all prompts, or a sequence of one per prompt."""
        ...

    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str]
    ) -> list[list[float]]:
        """``result[i][j]`` = log P(continuations[j] | prompts[i]): the summed log-probs of the
        continuation's tokens, with prompt and continuation encoded together. Where the
        tokenizer merges the continuation's start into the prompt's last token (a trailing
        space), that merged token is scored from the prompt prefix every continuation of
        ``prompts[i]`` shares, so that all of them are compared from the same conditioning."""
        ...
