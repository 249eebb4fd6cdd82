"""Retrieval-augmented serving: the account's history lines in the prompts, read from the
history file as ingest refreshes it, and behaviour read generatively (Bayes' rule through the
content direction) for a checkpoint trained so."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from typing import Any

import pytest

from services.common.contracts import (
    KPI_LEVELS,
    ColorSwatch,
    Context,
    DetectedObject,
    KpiLevel,
    KpiTarget,
    Tone,
    Verbalization,
)
from services.common.history import HistoryStore
from services.common.serving_profile import ServingProfile
from services.common.verbalization import render
from services.describer.grammar import description_regex
from services.describer.service import Describer
from services.describer.settings import DescriberSettings

NAVY = Verbalization(colors=[ColorSwatch(name="navy", rgb=(20, 40, 80), coverage=0.7)])
GOLD = Verbalization(
    colors=[ColorSwatch(name="gold", rgb=(230, 190, 40), coverage=0.6)], tones=[Tone.WARM]
)
TUNED = ServingProfile(retrieval=True, behaviour="generative", temperature=4.0)


def write_history(path: Path, posts: list[tuple[KpiLevel, Verbalization]]) -> Path:
    store = HistoryStore.from_looks(("nike", "likes", level, look) for level, look in posts)
    return store.write(path)


def settings(history: Path, **overrides: Any) -> DescriberSettings:
    return DescriberSettings(model_path=Path("/nonexistent"), history_path=history, **overrides)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    posts = [(KpiLevel.HIGH, NAVY)] * 2 + [(KpiLevel.LOW, GOLD)] * 6 + [(KpiLevel.MEDIUM, GOLD)]
    return write_history(tmp_path / "history.json", posts)


def free_backend(fake_backend: Any, profile: ServingProfile) -> Any:
    return fake_backend(
        lines={}, free_text="colors: navy (20,40,80) 70%", few_shot_prompt=False, serving=profile
    )


async def test_a_retrieval_checkpoint_reads_the_accounts_look_at_the_level(
    fake_backend: Any, context: Context, history: Path
) -> None:
    backend = free_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history))

    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [prompt] = backend.generate_calls[0]
    assert "history at this level: colors navy (20,40,80)" in prompt
    assert prompt.index("history at this level") < prompt.index("goal: high likes")


async def test_the_history_file_is_read_again_when_ingest_rewrites_it(
    fake_backend: Any, context: Context, history: Path
) -> None:
    backend = free_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history))
    target = KpiTarget(level=KpiLevel.HIGH)
    await describer.describe(context=context, target=target)
    write_history(history, [(KpiLevel.HIGH, GOLD)])
    os.utime(history, (1, 1))  # a new stamp even within the file system's time resolution

    response = await describer.describe(context=context, target=target)

    assert response.cached is False  # another history is another question
    assert "history at this level: colors gold" in backend.generate_calls[-1][0]


@pytest.mark.parametrize(
    ("profile", "setting"),
    [(ServingProfile(), "auto"), (TUNED, "off")],
    ids=["base-model", "turned-off"],
)
async def test_no_history_line_without_retrieval(
    fake_backend: Any, context: Context, history: Path, profile: ServingProfile, setting: str
) -> None:
    backend = free_backend(fake_backend, profile)
    describer = Describer(backend, settings(history, retrieval=setting))
    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))
    assert "history at" not in backend.generate_calls[0][0]


async def test_an_account_without_history_is_described_without_a_line(
    fake_backend: Any, history: Path
) -> None:
    backend = free_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history))
    await describer.describe(context=Context(account="newcomer"), target=KpiTarget())
    assert "history at" not in backend.generate_calls[0][0]


class LevelScoringBackend:
    """Scores a description by the level its content prompt asks for."""

    def __init__(self, fake_backend: Any, loglik: dict[KpiLevel, float]) -> None:
        self.inner = free_backend(fake_backend, TUNED)
        self.loglik = loglik

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str]
    ) -> list[list[float]]:
        self.inner.score_calls.append((list(prompts), list(continuations)))
        return [
            [next(v for level, v in self.loglik.items() if f"goal: {level.value} " in p)]
            for p in prompts
        ]


async def test_generative_behaviour_is_bayes_through_the_content_direction(
    fake_backend: Any, context: Context, history: Path
) -> None:
    loglik = {KpiLevel.LOW: -60.0, KpiLevel.MEDIUM: -58.0, KpiLevel.HIGH: -52.0}
    backend = LevelScoringBackend(fake_backend, loglik)
    describer = Describer(backend, settings(history))  # type: ignore[arg-type]

    response = await describer.likelihood(context=context, kpi_name="likes", verbalizations=[NAVY])

    [(level_prompts, continuations)] = backend.inner.score_calls
    assert continuations == [render(NAVY)]
    # One content prompt per level, each with that level's history.
    assert [p.count("history at this level") for p in level_prompts] == [1, 1, 1]
    assert "history at this level: colors gold" in level_prompts[0]
    assert "history at this level: colors navy" in level_prompts[2]
    # Posterior: loglik / T + log prior, the prior the account's level counts (+1 each).
    counts = {KpiLevel.LOW: 6, KpiLevel.MEDIUM: 1, KpiLevel.HIGH: 2}
    logits = {lv: loglik[lv] / 4.0 + math.log((counts[lv] + 1) / 12) for lv in KPI_LEVELS}
    total = sum(math.exp(v) for v in logits.values())
    [result] = response.results
    for level in KPI_LEVELS:
        assert result.probabilities[level] == pytest.approx(math.exp(logits[level]) / total)


async def test_generative_falls_back_to_the_level_word_for_an_unknown_account(
    fake_backend: Any, history: Path
) -> None:
    backend = free_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history))

    await describer.likelihood(
        context=Context(account="newcomer"), kpi_name="likes", verbalizations=[NAVY]
    )

    [(prompt_texts, continuations)] = backend.score_calls
    assert continuations == [" low", " medium", " high"]
    assert prompt_texts[0].endswith("level:")


class RotatingBackend:
    """Samples a different description for each prompt; rates gold images high, others low."""

    def __init__(self, fake_backend: Any, texts: list[str]) -> None:
        self.inner = free_backend(fake_backend, ServingProfile())
        self.texts = texts
        self.temperatures: list[float] = []
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, prompts: list[str], **options: Any) -> list[str]:
        self.batches.append(len(prompts))
        samples = []
        for _ in prompts:
            self.temperatures.append(options["temperature"])
            samples.append(self.texts[(len(self.temperatures) - 1) % len(self.texts)])
        return samples

    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str]
    ) -> list[list[float]]:
        return [[-0.1, -3.0, -3.0] if "gold" not in p else [-3.0, -3.0, -0.1] for p in prompts]


async def test_best_of_k_keeps_the_sample_rated_likeliest_to_reach_the_target(
    fake_backend: Any, context: Context, history: Path
) -> None:
    texts = ["colors: navy (20,40,80) 70%", "not a description", "colors: gold (230,190,40) 60%"]
    backend = RotatingBackend(fake_backend, texts)
    describer = Describer(backend, settings(history, describe_candidates=3))  # type: ignore[arg-type]

    high = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))
    low = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.LOW))

    assert [c.name for c in high.verbalization.colors] == ["gold"]
    assert [c.name for c in low.verbalization.colors] == ["navy"]
    assert backend.temperatures == [0.7] * 6  # sampled, never greedy
    assert backend.batches == [3, 3]  # the k samples decode as one batch
    assert high.cached is False and low.cached is False


async def test_a_checkpoint_with_fields_fills_exactly_its_lines(
    fake_backend: Any, context: Context, history: Path
) -> None:
    profile = ServingProfile(retrieval=True, fields=("colors", "tones", "objects"))
    backend = fake_backend(few_shot_prompt=False, serving=profile)
    describer = Describer(backend, settings(history))

    response = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    heads = [calls[0].rsplit("\n", 1)[-1] for calls in backend.generate_calls]
    assert heads == ["colors:", "tones:", "objects:"]  # no caption: the data had none
    assert "caption: a glass of iced coffee" not in backend.generate_calls[0][0]
    assert response.verbalization.caption is None
    assert [o.label for o in response.verbalization.objects] == ["shoe"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # The history's navy counts as a fifth sample and lends its RGB; red it lacks.
        ({}, [("navy", (20, 40, 80), 0.62), ("red", (200, 20, 30), 0.32)]),
        (
            {"palette_history_weight": 0, "palette_history_rgb": False},
            [("navy", (90, 90, 90), 0.6), ("red", (200, 20, 30), 0.4)],
        ),
    ],
)
async def test_averaged_colours_lean_on_the_history_line_in_the_prompt(
    fake_backend: Any,
    context: Context,
    history: Path,
    overrides: dict[str, Any],
    expected: list[tuple[str, tuple[int, int, int], float]],
) -> None:
    profile = ServingProfile(retrieval=True, fields=("colors", "tones", "objects"))
    backend = fake_backend(few_shot_prompt=False, serving=profile)
    backend.lines["colors"] = " navy (90,90,90) 60%; red (200,20,30) 40%"
    describer = Describer(backend, settings(history, palette_samples=4, **overrides))

    response = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    colors = response.verbalization.colors
    assert [(c.name, c.rgb, c.coverage) for c in colors] == expected


async def test_structured_samples_write_the_history_colours_at_the_history_rgb(
    fake_backend: Any, grammar_backend: Any, context: Context, history: Path
) -> None:
    backend = grammar_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history, palette_samples=4))

    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [colors] = [call for call in backend.calls if call[3] == 4]
    assert colors[1] == description_regex(
        ("colors",), pinned_rgb={"navy": (20, 40, 80)}, continues=True
    )


async def test_each_prompt_of_a_batch_pins_its_own_history(
    fake_backend: Any, grammar_backend: Any, context: Context, history: Path
) -> None:
    backend = grammar_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history, palette_samples=4))

    await asyncio.gather(
        *(
            describer.describe(context=context, target=KpiTarget(level=level))
            for level in (KpiLevel.HIGH, KpiLevel.LOW)
        )
    )

    sampled = [(prompt, regex) for prompt, regex, _, samples in backend.calls if samples == 4]
    assert len(sampled) == 2
    pinned = {"high": {"navy": (20, 40, 80)}, "low": {"gold": (230, 190, 40)}}
    for prompt, regex in sampled:
        level = prompt.rsplit("goal: ", 1)[-1].split()[0]
        assert regex == description_regex(("colors",), pinned_rgb=pinned[level], continues=True)
    assert {prompt.rsplit("goal: ", 1)[-1].split()[0] for prompt, _ in sampled} == set(pinned)


async def test_a_history_colour_outside_the_grammars_names_is_not_pinned(
    fake_backend: Any, grammar_backend: Any, context: Context, tmp_path: Path
) -> None:
    odd = Verbalization(colors=[ColorSwatch(name="plumperadio", rgb=(1, 2, 3), coverage=0.7)])
    history = write_history(tmp_path / "history.json", [(KpiLevel.HIGH, odd)])
    backend = grammar_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history, palette_samples=4))

    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [colors] = [call for call in backend.calls if call[3] == 4]
    assert colors[1] == description_regex(("colors",), continues=True)


async def test_without_history_rgb_the_samples_choose_their_digits(
    fake_backend: Any, grammar_backend: Any, context: Context, history: Path
) -> None:
    backend = grammar_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history, palette_samples=4, palette_history_rgb=False))

    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [colors] = [call for call in backend.calls if call[3] == 4]
    assert colors[1] == description_regex(("colors",), continues=True)


def one_draw_describer(backend: Any, history: Path, colors: str) -> tuple[Any, Describer]:
    """A describer of one colours draw over ``backend``, whose colours line reads ``colors``."""
    backend.inner.lines["colors"] = colors
    return backend, Describer(backend, settings(history, palette_samples=1))


async def test_one_greedy_colors_line_is_averaged_with_the_history_line(
    fake_backend: Any, grammar_backend: Any, context: Context, history: Path
) -> None:
    backend, describer = one_draw_describer(
        grammar_backend(fake_backend, TUNED), history, " navy (20,40,80) 60%; red (200,20,30) 40%"
    )

    response = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [colors] = [call for call in backend.calls if r"\ncolors: " in call[1]]
    assert colors[1:] == (
        description_regex(("colors",), pinned_rgb={"navy": (20, 40, 80)}, continues=True),
        0.0,  # the one draw is the greedy line
        1,
    )
    # The greedy line and the history's navy 70%, one each.
    palette = [(c.name, c.rgb, c.coverage) for c in response.verbalization.colors]
    assert palette == [("navy", (20, 40, 80), 0.65), ("red", (200, 20, 30), 0.2)]


async def test_without_history_weight_the_greedy_description_is_one_decode(
    fake_backend: Any, grammar_backend: Any, context: Context, history: Path
) -> None:
    backend = grammar_backend(fake_backend, TUNED)
    describer = Describer(backend, settings(history, palette_samples=1, palette_history_weight=0))

    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [(_, regex, temperature, samples)] = backend.calls
    assert (temperature, samples) == (0.0, 1)
    assert regex == description_regex(
        ("caption", "colors", "tones", "objects"), pinned_rgb={"navy": (20, 40, 80)}
    )


async def test_a_greedy_description_without_history_rgb_chooses_its_digits(
    fake_backend: Any, grammar_backend: Any, context: Context, history: Path
) -> None:
    backend = grammar_backend(fake_backend, TUNED)
    describer = Describer(
        backend,
        settings(history, palette_samples=1, palette_history_weight=0, palette_history_rgb=False),
    )

    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [(_, regex, _, _)] = backend.calls
    assert regex == description_regex(("caption", "colors", "tones", "objects"))


def shapes(*objects: tuple[str, float, tuple[float, float, float, float]]) -> Verbalization:
    return Verbalization(
        colors=NAVY.colors,
        objects=[DetectedObject(label=label, confidence=c, box=box) for label, c, box in objects],
    )


@pytest.mark.parametrize("pin", [True, False])
async def test_the_objects_line_names_the_accounts_labels_at_their_typical_boxes(
    fake_backend: Any, grammar_backend: Any, context: Context, tmp_path: Path, pin: bool
) -> None:
    posts = [
        shapes(("star", 0.9, (0.1, 0.1, 0.3, 0.3)), ("circle", 0.6, (0.5, 0.5, 0.9, 0.9))),
        shapes(("star", 0.7, (0.3, 0.3, 0.5, 0.5))),
    ]
    history = write_history(tmp_path / "history.json", [(KpiLevel.HIGH, post) for post in posts])
    backend = grammar_backend(fake_backend, TUNED)
    backend.inner.lines["objects"] = " star 0.80 [0.20,0.20,0.40,0.40]"
    describer = Describer(backend, settings(history, palette_samples=1, object_history_boxes=pin))

    response = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [objects] = [call[1] for call in backend.calls if "objects: " in call[1]]
    star = DetectedObject(label="star", confidence=0.8, box=(0.2, 0.2, 0.4, 0.4))
    circle = DetectedObject(label="circle", confidence=0.6, box=(0.5, 0.5, 0.9, 0.9))
    typical = (star, circle) if pin else ()  # the commonest label first
    assert objects == description_regex(
        ("tones", "objects"), pinned_objects=typical, continues=True
    )
    assert response.verbalization.objects == [star]


async def test_a_prompt_without_history_keeps_its_greedy_line_beside_one_with_history(
    fake_backend: Any, grammar_backend: Any, context: Context, history: Path
) -> None:
    # Not in the order an average writes (largest share first): an average would reorder it.
    _, describer = one_draw_describer(
        grammar_backend(fake_backend, TUNED), history, " red (200,20,30) 39%; navy (90,90,90) 61%"
    )
    high = KpiTarget(level=KpiLevel.HIGH)
    stranger = context.model_copy(update={"account": "adidas"})  # no history
    jobs = [describer._describe_job(context, high), describer._describe_job(stranger, high)]
    assert jobs[0].history and not jobs[1].history

    # One batch, as the micro-batcher may form it.
    with_history, without = describer._generate_descriptions(jobs, 0.0)

    assert "colors: navy (20,40,80) 66%; red (200,20,30) 20%" in with_history
    assert "colors: red (200,20,30) 39%; navy (90,90,90) 61%" in without
