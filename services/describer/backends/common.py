"""What both backends share: the served model's identity and prompts, token-prefix
arithmetic and the model folder's version."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.common.contracts import ModelInfo
from services.common.model_folders import folder_version
from services.common.prompts import ChatMessage, chat_prompt
from services.common.serving_profile import ServingProfile
from services.describer.model_prep import MANIFEST


class ServedModel:
    """The part of ``LlmBackend`` both backends answer alike: a model identity, its serving
    profile and prompt kind, and prompts rendered with the local tokenizer's chat template.
    Both decode under a grammar (``supports_regex``)."""

    _info: ModelInfo
    _serving: ServingProfile
    _few_shot_prompt: bool
    _tokenizer: Any

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def serving(self) -> ServingProfile:
        return self._serving

    @property
    def few_shot_prompt(self) -> bool:
        return self._few_shot_prompt

    @property
    def supports_regex(self) -> bool:
        return True

    def chat_prompt(self, messages: list[ChatMessage]) -> str:
        return chat_prompt(self._tokenizer, messages)


def common_prefix_length(left: Sequence[int], right: Sequence[int]) -> int:
    """How many leading tokens ``left`` and ``right`` share."""
    length = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        length += 1
    return length


def joint_encodings(
    token_ids: Callable[[str], list[int]], prompt: str, continuations: Sequence[str]
) -> tuple[int, list[list[int]]]:
    """Each continuation encoded together with ``prompt`` (BPE merges across the boundary:
    a leading space joins the next word), and how many leading tokens all of them share
    with the prompt's own encoding. Scoring every continuation from that shared prefix
    compares them from the same conditioning, a merged boundary token included."""
    prompt_ids = token_ids(prompt)
    joints = [token_ids(prompt + continuation) for continuation in continuations]
    shared = min(common_prefix_length(prompt_ids, joint) for joint in joints)
    if shared == 0:
        raise ValueError("prompt too short: no token precedes the continuation")
    return shared, joints


def regex_per_prompt(regex: str | Sequence[str] | None, prompts: int) -> list[str] | None:
    """``generate``'s ``regex`` as one expression per prompt (None: unconstrained)."""
    if regex is None:
        return None
    if isinstance(regex, str):
        return [regex] * prompts
    expressions = list(regex)
    if len(expressions) != prompts:
        raise ValueError(f"{len(expressions)} expressions for {prompts} prompts")
    return expressions


def output_cache(output: Any) -> Any:
    """The KV cache a transformers forward pass or generate returned, under either name."""
    cache = getattr(output, "cache", None)  # transformers >= 5
    return cache if cache is not None else getattr(output, "past_key_values", None)


def model_version(path: Path) -> str:
    """A short content hash of the model folder: it keys caches and tells checkpoints apart."""
    return folder_version(path, manifest=MANIFEST)
