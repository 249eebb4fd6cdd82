"""Fixtures of the describer tests: a tiny random Llama with a BPE tokenizer trained here (for
fast, exact checks of the backend), a scripted fake backend (for wiring), and the real
SmolLM2, prepared once into the cache `make models` fills."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.common import prompts
from services.common.contracts import (
    ColorSwatch,
    Context,
    DetectedObject,
    KpiLevel,
    KpiTarget,
    ModelInfo,
    Tone,
    Verbalization,
)
from services.common.prompts import ChatMessage, render_plain_chat
from services.common.serving_profile import ServingProfile
from services.common.settings import default_smollm2_dir
from services.common.verbalization import render
from services.describer.model_prep import prepare_smollm2


def sample_verbalizations() -> list[Verbalization]:
    return [
        Verbalization(
            caption="a runner on a city street at dusk",
            colors=[
                ColorSwatch(name="navy", rgb=(20, 30, 90), coverage=0.41),
                ColorSwatch(name="white", rgb=(245, 245, 245), coverage=0.3),
            ],
            tones=[Tone.COOL, Tone.DARK],
            objects=[DetectedObject(label="person", confidence=0.91, box=(0.1, 0.2, 0.45, 0.95))],
            text="Just do it",
        ),
        Verbalization(
            colors=[ColorSwatch(name="orange", rgb=(240, 120, 20), coverage=0.6)],
            tones=[Tone.WARM, Tone.BRIGHT, Tone.SATURATED],
        ),
        Verbalization(objects=[DetectedObject(label="cup", confidence=0.5, box=(0, 0, 1, 1))]),
    ]


def sample_context() -> Context:
    return Context(
        account="nike",
        text="New running shoes drop on Friday",
        keywords=["running", "shoes"],
        posted_at=datetime(2024, 5, 3, 18, 0, tzinfo=UTC),
    )


@pytest.fixture
def context() -> Context:
    return sample_context()


@pytest.fixture
def verbalizations() -> list[Verbalization]:
    return sample_verbalizations()


def _tokenizer_corpus() -> list[str]:
    context = sample_context()
    lines = [render(v) for v in sample_verbalizations()]
    for level in KpiLevel:
        target = KpiTarget(level=level)
        lines.extend(m["content"] for m in prompts.describe_messages(context, target))
        lines.append(prompts.behaviour_completion(level))
    lines.append("level: low level: medium level: high " * 3)
    return lines * 4


@pytest.fixture(scope="session")
def tiny_model_dir(build_tiny_llama: Callable[[Iterable[str], int], Path]) -> Path:
    """A 2-layer Llama (hidden 64) and a byte-level BPE trained on verbalization-like text."""
    return build_tiny_llama(_tokenizer_corpus(), 600)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct folder; converted from the GGUF once per machine (~20 s)."""
    return prepare_smollm2(default_smollm2_dir())


class FakeBackend:
    """Scripted backend for wiring tests: fixed generations, fixed level log-probs, call log."""

    def __init__(
        self,
        *,
        lines: dict[str, str] | None = None,
        free_text: str = "",
        level_logprobs: Sequence[float] = (-2.0, -1.0, -0.5),
        fail_with: Exception | None = None,
        few_shot_prompt: bool = True,
        serving: ServingProfile | None = None,
    ) -> None:
        self.few_shot_prompt = few_shot_prompt
        self.supports_regex = False
        self.serving = serving or ServingProfile()
        self.lines = lines or {
            "caption": " a red shoe on a white floor",
            "colors": " red (200,20,30) 40%; white (250,250,250) 50%",
            "tones": " warm, bright",
            "objects": " shoe 0.80 [0.20,0.30,0.70,0.90]",
        }
        self.free_text = free_text
        self.level_logprobs = list(level_logprobs)
        self.fail_with = fail_with
        self.generate_calls: list[list[str]] = []
        self.score_calls: list[tuple[list[str], list[str]]] = []
        self.on_call: Callable[[], None] | None = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name="fake", version="fake-1")

    def chat_prompt(self, messages: list[ChatMessage]) -> str:
        return render_plain_chat(messages)

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
        assert regex is None, "the scripted fake cannot decode under a grammar"
        self._called()
        self.generate_calls.append(list(prompts))
        results = []
        for prompt in prompts:
            key = prompt.rsplit("\n", 1)[-1].removesuffix(":")
            results += [self.lines.get(key, self.free_text)] * samples
        return results

    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str]
    ) -> list[list[float]]:
        self._called()
        self.score_calls.append((list(prompts), list(continuations)))
        return [list(self.level_logprobs) for _ in prompts]

    def _called(self) -> None:
        if self.on_call is not None:
            self.on_call()
        if self.fail_with is not None:
            raise self.fail_with


@pytest.fixture
def fake_backend() -> type[FakeBackend]:
    """The FakeBackend class, to build one per test with its own script."""
    return FakeBackend


class GrammarBackend:
    """A backend that decodes under a regex: answers each prompt with the lines its expression
    asks for (the scripted fake's values), and logs (prompt, regex, temperature, samples)."""

    supports_regex = True

    def __init__(self, fake_backend: type[FakeBackend], serving: ServingProfile | None = None):
        self.inner = fake_backend(serving=serving)
        self.calls: list[tuple[str, str, float, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, texts: list[str], **options: Any) -> list[str]:
        regex = options["regex"]
        regexes = [regex] * len(texts) if isinstance(regex, str) else list(regex)
        samples = options.get("samples", 1)
        answers = []
        for text, expression in zip(texts, regexes, strict=True):
            keys = [key for key in prompts.DESCRIBE_FIELDS if f"{key}: " in expression]
            answer = "\n".join(f"{key}:{self.inner.lines[key]}" for key in keys)
            if expression.lstrip("(").startswith(r"\n"):  # lines continuing a description
                answer = "\n" + answer
            self.calls.append((text, expression, options.get("temperature", 0.0), samples))
            answers += [answer] * samples
        return answers


@pytest.fixture
def grammar_backend() -> type[GrammarBackend]:
    """The GrammarBackend class: a scripted backend that decodes 'under a grammar'."""
    return GrammarBackend
