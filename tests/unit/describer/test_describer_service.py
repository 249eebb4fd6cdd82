"""The Describer: parsing and repairs, level probabilities, caching and single-flight, errors.

Wiring is checked with a scripted fake backend; the model-facing paths also run once on the
tiny random Llama."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from services.common import metrics, prompts
from services.common.contracts import KPI_LEVELS, Context, KpiLevel, KpiTarget, Verbalization
from services.common.errors import BackendError, InvalidInput, ModelOutputError, Overloaded
from services.common.lru import LruCache
from services.common.settings import BatchLimits
from services.describer.backends.transformers_backend import TransformersBackend
from services.describer.grammar import description_regex
from services.describer.service import Describer
from services.describer.settings import DescriberSettings


def make_settings(**overrides: Any) -> DescriberSettings:
    return DescriberSettings(model_path=Path("/nonexistent"), **overrides)


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_describe_fills_each_field_line_and_parses_it(
    fake_backend: Any, context: Context
) -> None:
    backend = fake_backend()
    describer = Describer(backend, make_settings(palette_samples=1))

    response = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    # One call per field, each prompt ending in the key the model must complete.
    heads = [calls[0].rsplit("\n", 1)[-1] for calls in backend.generate_calls]
    assert heads == [f"{key}:" for key in prompts.DESCRIBE_FIELDS]
    assert "colors: red (200,20,30) 40%; white (250,250,250) 50%" in backend.generate_calls[3][0]
    assert [c.name for c in response.verbalization.colors] == ["red", "white"]
    assert response.verbalization.caption == "a red shoe on a white floor"
    assert response.text.startswith("caption: a red shoe on a white floor\ncolors: red")
    assert response.repairs == []
    assert response.cached is False
    assert response.model.version == "fake-1"
    assert response.prompt_version == prompts.PROMPT_VERSION


async def test_describe_free_decoding_asks_once_for_the_whole_text(
    fake_backend: Any, context: Context
) -> None:
    backend = fake_backend(lines={}, free_text="colors: blue (0,0,255) 30%\ntones: cool\n")
    describer = Describer(backend, make_settings(describe_decoding="free"))

    response = await describer.describe(context=context, target=KpiTarget())

    assert len(backend.generate_calls) == 1
    assert backend.generate_calls[0][0].endswith("### assistant\n")
    assert response.text == "colors: blue (0,0,255) 30%\ntones: cool"


async def test_a_checkpoint_tuned_on_the_compact_prompt_gets_it_and_free_decoding(
    fake_backend: Any, context: Context
) -> None:
    backend = fake_backend(
        lines={}, free_text="colors: blue (0,0,255) 30%\ntones: cool\n", few_shot_prompt=False
    )
    describer = Describer(backend, make_settings())  # describe_decoding="auto"

    response = await describer.describe(context=context, target=KpiTarget())

    [prompt] = backend.generate_calls[0]
    assert "caption: a glass of iced coffee" not in prompt  # no worked examples
    assert prompt.count("### user") == 1
    assert response.text == "colors: blue (0,0,255) 30%\ntones: cool"


async def test_the_base_model_gets_worked_examples_and_field_decoding(
    fake_backend: Any, context: Context
) -> None:
    backend = fake_backend()
    describer = Describer(backend, make_settings(palette_samples=1))

    await describer.describe(context=context, target=KpiTarget())

    assert len(backend.generate_calls) == len(prompts.DESCRIBE_FIELDS)
    assert "caption: a glass of iced coffee" in backend.generate_calls[0][0]


async def test_describe_reports_repairs_of_malformed_output(
    fake_backend: Any, context: Context
) -> None:
    backend = fake_backend(
        lines={
            "caption": " a shoe",
            "colors": " Red (300,20,30) 40%; ???; white (250,250,250) 90%",
            "tones": " warm, cold, bright, bright",
            "objects": " shoe [0.2,0.3,1.4,0.9",
        }
    )
    describer = Describer(backend, make_settings(palette_samples=1))
    before = counter("boig_verbalization_repairs_total", service="describer")

    response = await describer.describe(context=context, target=KpiTarget())

    assert {c.name for c in response.verbalization.colors} == {"red", "white"}
    assert all(0 <= channel <= 255 for c in response.verbalization.colors for channel in c.rgb)
    assert sum(c.coverage for c in response.verbalization.colors) <= 1.0
    assert [t.value for t in response.verbalization.tones] == ["warm", "bright"]
    # Neither a confidence nor a closed box: nothing says this is an object.
    assert response.verbalization.objects == []
    joined = "\n".join(response.repairs)
    for fragment in ("clipped rgb", "unreadable color", "rescaled", "unknown tone", "object"):
        assert fragment in joined
    assert counter("boig_verbalization_repairs_total", service="describer") == before + 1


class PaletteDrawsBackend:
    """Answers each colors prompt with the next of ``draws`` (cycling), the other lines as
    the scripted fake does; logs every call with its temperature and samples."""

    def __init__(self, fake_backend: Any, draws: list[str]) -> None:
        self.inner = fake_backend()
        self.draws = draws
        self.drawn = 0
        self.calls: list[tuple[list[str], float, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, prompts: list[str], **options: Any) -> list[str]:
        samples = options.get("samples", 1)
        self.calls.append((list(prompts), options.get("temperature", 0.0), samples))
        answers = []
        for prompt in prompts:
            for _ in range(samples):
                if prompt.endswith("colors:"):
                    answers.append(self.draws[self.drawn % len(self.draws)])
                    self.drawn += 1
                else:
                    key = prompt.rsplit("\n", 1)[-1].removesuffix(":")
                    answers.append(self.inner.lines[key])
        return answers


async def test_the_colors_line_is_the_average_of_sampled_palettes(
    fake_backend: Any, context: Context
) -> None:
    draws = [
        " navy (20,30,90) 80%; white (250,250,250) 20%",
        " navy (40,50,110) 60%; gold (240,200,40) 40%",
        " white (240,240,240) 52%; ???",
        " navy (20,30,90) 100%",
    ]
    backend = PaletteDrawsBackend(fake_backend, draws)
    settings = make_settings(palette_samples=4, palette_temperature=0.9)
    describer = Describer(backend, settings)  # type: ignore[arg-type]

    response = await describer.describe(context=context, target=KpiTarget())

    [(color_prompts, temperature, samples)] = [call for call in backend.calls if call[1] > 0]
    assert len(color_prompts) == 1 and samples == 4 and temperature == 0.9
    # Every other line is greedy, one decoding per prompt.
    assert sum(call[1] == 0 and call[2] == 1 for call in backend.calls) == 3
    # Mean shares over the 4 draws: navy 2.4/4, white 0.72/4, gold 0.4/4, largest first;
    # each RGB is the mean weighted by the shares: navy (20*.8 + 40*.6 + 20*1) / 2.4 = 25.
    colors = response.verbalization.colors
    assert [(c.name, c.coverage) for c in colors] == [
        ("navy", 0.6),
        ("white", 0.18),
        ("gold", 0.1),
    ]
    assert colors[0].rgb == (25, 35, 95)
    # The lines after it are decoded after the averaged line, not after any one draw.
    tones_prompt = backend.calls[-2][0][0]
    assert tones_prompt.endswith(
        "colors: navy (25,35,95) 60%; white (243,243,243) 18%; gold (240,200,40) 10%\ntones:"
    )


async def test_average_palette_keeps_a_draw_when_none_reads_as_a_colour(
    fake_backend: Any, context: Context
) -> None:
    backend = PaletteDrawsBackend(fake_backend, [" ???", " (((", " !!"])
    describer = Describer(backend, make_settings(palette_samples=3))  # type: ignore[arg-type]

    response = await describer.describe(context=context, target=KpiTarget())

    assert response.verbalization.colors == []
    assert any("unreadable color" in repair for repair in response.repairs)
    assert [t.value for t in response.verbalization.tones] == ["warm", "bright"]


async def test_sampled_descriptions_are_not_averaged(fake_backend: Any, context: Context) -> None:
    backend = PaletteDrawsBackend(fake_backend, [" red (200,20,30) 40%"])
    settings = make_settings(palette_samples=4, temperature=0.8)
    describer = Describer(backend, settings)  # type: ignore[arg-type]

    await describer.describe(context=context, target=KpiTarget())

    assert [samples for _, _, samples in backend.calls] == [1] * len(prompts.DESCRIBE_FIELDS)


async def test_describe_refuses_output_without_colors_tones_or_objects(
    fake_backend: Any, context: Context
) -> None:
    garbage = {key: " lorem ipsum )))(((" for key in prompts.DESCRIBE_FIELDS}
    describer = Describer(fake_backend(lines=garbage), make_settings())

    with pytest.raises(ModelOutputError, match="no readable colors, tones or objects"):
        await describer.describe(context=context, target=KpiTarget())


async def test_likelihood_is_a_softmax_over_the_three_level_words(
    fake_backend: Any, context: Context, verbalizations: list[Verbalization]
) -> None:
    backend = fake_backend(level_logprobs=(-3.0, -1.0, -0.2))
    describer = Describer(backend, make_settings())

    response = await describer.likelihood(
        context=context, kpi_name="clicks", verbalizations=verbalizations
    )

    [(prompt_texts, continuations)] = backend.score_calls
    assert continuations == [" low", " medium", " high"]
    assert len(prompt_texts) == len(verbalizations)
    assert all(p.endswith("### assistant\nlevel:") for p in prompt_texts)
    assert "KPI: clicks" in prompt_texts[0] and "navy (20,30,90) 41%" in prompt_texts[0]
    weights = [math.exp(-3.0), math.exp(-1.0), math.exp(-0.2)]
    expected = {level: w / sum(weights) for level, w in zip(KPI_LEVELS, weights, strict=True)}
    for result in response.results:
        assert sum(result.probabilities.values()) == pytest.approx(1.0)
        assert result.probabilities == pytest.approx(expected)
        midpoint = 0.3 * expected[KpiLevel.LOW] + 0.75 * expected[KpiLevel.MEDIUM]
        midpoint += 0.95 * expected[KpiLevel.HIGH]
        assert result.expected_percentile == pytest.approx(midpoint)
    assert response.model.name == "fake"


async def test_likelihood_survives_extreme_log_probs(
    fake_backend: Any, context: Context, verbalizations: list[Verbalization]
) -> None:
    describer = Describer(fake_backend(level_logprobs=(-2000.0, -1.0, -1500.0)), make_settings())
    response = await describer.likelihood(
        context=context, kpi_name="likes", verbalizations=verbalizations[:1]
    )
    assert response.results[0].probabilities[KpiLevel.MEDIUM] == pytest.approx(1.0)
    assert response.results[0].expected_percentile == pytest.approx(0.75)


async def test_likelihood_refuses_more_verbalizations_than_configured(
    fake_backend: Any, context: Context, verbalizations: list[Verbalization]
) -> None:
    backend = fake_backend()
    describer = Describer(backend, make_settings(batch_limits=BatchLimits(max_items=2)))
    with pytest.raises(InvalidInput, match="limit is 2"):
        await describer.likelihood(context=context, kpi_name="likes", verbalizations=verbalizations)
    assert backend.score_calls == []


async def test_identical_requests_are_served_from_the_cache(
    fake_backend: Any, context: Context
) -> None:
    backend = fake_backend()
    describer = Describer(backend, make_settings())
    target = KpiTarget(level=KpiLevel.LOW)
    hits = counter("boig_cache_lookups_total", service="describer", cache="result", outcome="hit")

    first = await describer.describe(context=context, target=target)
    calls_after_first = len(backend.generate_calls)
    second = await describer.describe(context=context, target=target)

    assert len(backend.generate_calls) == calls_after_first
    assert (first.cached, second.cached) == (False, True)
    assert second.verbalization == first.verbalization
    assert (
        counter("boig_cache_lookups_total", service="describer", cache="result", outcome="hit")
        == hits + 1
    )
    # A different target is a different request.
    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))
    assert len(backend.generate_calls) == 2 * calls_after_first


async def test_concurrent_identical_requests_share_one_computation(
    fake_backend: Any, context: Context, verbalizations: list[Verbalization]
) -> None:
    backend = fake_backend()
    release = threading.Event()
    backend.on_call = lambda: release.wait(5)  # holds the model until every request is queued
    describer = Describer(backend, make_settings())

    async def ask() -> Any:
        return await describer.likelihood(
            context=context, kpi_name="likes", verbalizations=verbalizations
        )

    tasks = [asyncio.create_task(ask()) for _ in range(5)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*tasks)

    assert len(backend.score_calls) == 1
    assert all(result == results[0] for result in results)


def held_backend(fake_backend: Any) -> tuple[Any, threading.Event]:
    """A fake backend whose model calls wait until the event is set (5 s at most)."""
    backend = fake_backend()
    release = threading.Event()
    backend.on_call = lambda: release.wait(5)
    return backend, release


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_work(
    fake_backend: Any, context: Context
) -> None:
    backend, release = held_backend(fake_backend)
    describer = Describer(backend, make_settings(palette_samples=1))
    target = KpiTarget()

    leaver = asyncio.create_task(describer.describe(context=context, target=target))
    stayer = asyncio.create_task(describer.describe(context=context, target=target))
    await asyncio.sleep(0.05)
    leaver.cancel()
    release.set()

    response = await stayer
    assert response.verbalization.colors
    assert len(backend.generate_calls) == len(prompts.DESCRIBE_FIELDS)


class Overlap:
    """How many model calls ran at once, at most."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()


def track_overlap(backend: Any, *, seconds: float) -> Overlap:
    """Make each of ``backend``'s model calls take ``seconds`` and count how many overlap."""
    overlap = Overlap()

    def track() -> None:
        with overlap.lock:
            overlap.running += 1
            overlap.most = max(overlap.most, overlap.running)
        threading.Event().wait(seconds)
        with overlap.lock:
            overlap.running -= 1

    backend.on_call = track
    return overlap


async def test_queued_work_whose_callers_all_left_is_dropped_before_the_model(
    fake_backend: Any, context: Context
) -> None:
    backend, release = held_backend(fake_backend)
    describer = Describer(backend, make_settings(palette_samples=1, max_pending_requests=2))

    def ask(kpi: str) -> asyncio.Task[Any]:
        return asyncio.create_task(describer.describe(context=context, target=KpiTarget(name=kpi)))

    dropped = counter("boig_model_work_dropped_total", service="describer")
    running = ask("running")
    await asyncio.sleep(0.05)
    left = [ask("abandoned"), ask("abandoned")]  # two callers of one question
    await asyncio.sleep(0.05)
    left[0].cancel()
    await asyncio.sleep(0.01)
    assert counter("boig_model_work_dropped_total", service="describer") == dropped
    left[1].cancel()
    await asyncio.sleep(0.01)
    assert counter("boig_model_work_dropped_total", service="describer") == dropped + 1
    # Its place under the cap is free at once: this would be refused if it still counted.
    admitted = ask("next")
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(running, admitted)
    prompts_seen = " ".join(p for call in backend.generate_calls for p in call)
    assert "next" in prompts_seen and "abandoned" not in prompts_seen
    # A later caller of the dropped question gets a fresh answer, not a cancellation.
    assert (await ask("abandoned")).verbalization


async def test_dropping_running_work_keeps_the_model_until_its_thread_ends(
    fake_backend: Any, context: Context, verbalizations: list[Verbalization]
) -> None:
    backend = fake_backend()
    overlap = track_overlap(backend, seconds=0.1)
    describer = Describer(backend, make_settings(palette_samples=1))
    first = asyncio.create_task(
        describer.likelihood(context=context, kpi_name="a", verbalizations=verbalizations)
    )
    await asyncio.sleep(0.03)  # its thread is in the model now
    first.cancel()
    second = describer.likelihood(context=context, kpi_name="b", verbalizations=verbalizations)
    await second
    assert overlap.most == 1  # the second call waited for the abandoned thread to finish


async def test_work_beyond_the_pending_cap_is_refused_with_retry_after(
    fake_backend: Any, context: Context
) -> None:
    backend, release = held_backend(fake_backend)
    describer = Describer(backend, make_settings(palette_samples=1, max_pending_requests=2))

    def ask(kpi: str) -> asyncio.Task[Any]:
        return asyncio.create_task(describer.describe(context=context, target=KpiTarget(name=kpi)))

    admitted = [ask("a"), ask("b")]
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as refused:
        await describer.describe(context=context, target=KpiTarget(name="c"))
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    joined = ask("a")  # the same question shares admitted work: no new model work, no refusal
    release.set()
    await asyncio.gather(*admitted, joined)
    # Once the queue drained, new work is admitted again.
    assert (await describer.describe(context=context, target=KpiTarget(name="c"))).verbalization


async def test_work_that_would_wait_past_the_limit_is_refused_at_once(
    fake_backend: Any, context: Context
) -> None:
    backend = fake_backend()
    settings = make_settings(palette_samples=1, max_queue_wait_seconds=0.5)
    describer = Describer(backend, settings)
    backend.on_call = lambda: threading.Event().wait(0.2 / len(prompts.DESCRIBE_FIELDS))
    await describer.describe(context=context, target=KpiTarget(name="warm"))  # ~0.2 s a request
    release = threading.Event()
    backend.on_call = lambda: release.wait(5)

    def ask(kpi: str) -> asyncio.Task[Any]:
        return asyncio.create_task(describer.describe(context=context, target=KpiTarget(name=kpi)))

    admitted = [ask("a"), ask("b")]  # answered after about 0.2 and 0.4 s: under 0.5 s
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as refused:  # about 0.6 s
        await describer.describe(context=context, target=KpiTarget(name="c"))
    assert "about 1 s" in refused.value.message
    assert refused.value.retry_after is not None and refused.value.retry_after >= 0.1
    assert counter("boig_model_pending_requests", service="describer") == 2
    release.set()
    await asyncio.gather(*admitted)
    assert counter("boig_model_pending_requests", service="describer") == 0
    # However slow the model has been, work that finds the queue empty runs.
    describer._observe_request_seconds(1000.0)
    assert (await describer.describe(context=context, target=KpiTarget(name="e"))).verbalization


async def test_best_of_is_admitted_once_not_again_for_its_own_rating(
    fake_backend: Any, context: Context
) -> None:
    # Its likelihood call runs inside admitted work: with room for one computation, a second
    # admission would refuse the describe after its sampling was done.
    settings = make_settings(palette_samples=1, describe_candidates=2, max_pending_requests=1)
    describer = Describer(fake_backend(), settings)
    response = await describer.describe(context=context, target=KpiTarget())
    assert response.verbalization.colors


async def test_sampled_descriptions_are_not_cached(fake_backend: Any, context: Context) -> None:
    backend = fake_backend()
    describer = Describer(backend, make_settings(temperature=0.8))
    await describer.describe(context=context, target=KpiTarget())
    second = await describer.describe(context=context, target=KpiTarget())
    assert second.cached is False
    assert len(backend.generate_calls) == 2 * len(prompts.DESCRIBE_FIELDS)


async def test_failures_are_typed_and_not_cached(fake_backend: Any, context: Context) -> None:
    backend = fake_backend(fail_with=RuntimeError("CUDA out of memory"))
    describer = Describer(backend, make_settings())

    with pytest.raises(BackendError, match="see the describer log"):
        await describer.describe(context=context, target=KpiTarget())
    backend.fail_with = None
    response = await describer.describe(context=context, target=KpiTarget())
    assert response.cached is False


async def test_model_calls_never_overlap(fake_backend: Any, context: Context) -> None:
    backend = fake_backend()
    overlap = track_overlap(backend, seconds=0.01)
    describer = Describer(backend, make_settings())
    targets = [KpiTarget(name=f"kpi{i}") for i in range(4)]
    await asyncio.gather(*(describer.describe(context=context, target=t) for t in targets))
    assert overlap.most == 1


def test_lru_cache_forgets_the_least_recently_used_entry() -> None:
    cache: LruCache[int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    disabled: LruCache[int] = LruCache(0)
    disabled.put("a", 1)
    assert disabled.get("a") is None and len(disabled) == 0


# --- the same paths on a real (tiny, random) model ------------------------------------


@pytest.fixture(scope="module")
def tiny_describer(tiny_model_dir: Path) -> Describer:
    backend = TransformersBackend.load(tiny_model_dir, device="cpu")
    return Describer(backend, DescriberSettings(model_path=tiny_model_dir))


async def test_tiny_model_likelihood_gives_distributions(
    tiny_describer: Describer, context: Context, verbalizations: list[Verbalization]
) -> None:
    response = await tiny_describer.likelihood(
        context=context, kpi_name="likes", verbalizations=verbalizations
    )
    assert len(response.results) == len(verbalizations)
    for result in response.results:
        assert set(result.probabilities) == set(KPI_LEVELS)
        assert sum(result.probabilities.values()) == pytest.approx(1.0)
        assert 0.3 <= result.expected_percentile <= 0.95
    # Different images get different predictions from the same model.
    assert response.results[0].probabilities != response.results[1].probabilities


async def test_tiny_model_describe_ends_in_a_description_or_a_typed_error(
    tiny_model_dir: Path, context: Context
) -> None:
    # An untrained model decoding line by line writes noise: the service must turn it into
    # repairs or refuse it.
    backend = TransformersBackend.load(tiny_model_dir, device="cpu")
    settings = DescriberSettings(model_path=tiny_model_dir, describe_decoding="fields")
    try:
        response = await Describer(backend, settings).describe(context=context, target=KpiTarget())
    except ModelOutputError:
        return
    assert response.repairs


async def test_tiny_model_under_the_grammar_describes_without_format_repairs(
    tiny_describer: Describer, context: Context
) -> None:
    # The same noise under the description grammar (the default): every line is readable;
    # only what a regular expression cannot say may need repair.
    response = await tiny_describer.describe(context=context, target=KpiTarget())
    unsaid = ("rescaled color coverages", "clipped or reordered box")
    assert all(repair.startswith(unsaid) for repair in response.repairs), response.repairs
    assert response.verbalization.colors and response.verbalization.tones


async def test_structured_decoding_writes_the_description_in_one_constrained_call(
    fake_backend: Any, grammar_backend: Any, context: Context
) -> None:
    backend = grammar_backend(fake_backend)
    describer = Describer(backend, make_settings(palette_samples=1))  # auto -> structured

    response = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    [(prompt, regex, temperature, samples)] = backend.calls
    assert regex == description_regex(prompts.DESCRIBE_FIELDS)
    assert (temperature, samples) == (0.0, 1)
    assert prompt.endswith("### assistant\n")
    assert response.text.startswith("caption: a red shoe on a white floor\ncolors: red")
    assert response.repairs == []


async def test_structured_palette_averaging_samples_the_colors_line_between_greedy_segments(
    fake_backend: Any, grammar_backend: Any, context: Context
) -> None:
    backend = grammar_backend(fake_backend)
    describer = Describer(backend, make_settings(palette_samples=4, palette_temperature=0.6))

    response = await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    caption, colors, rest = backend.calls
    assert caption[1] == description_regex(("caption",))
    assert caption[2:] == (0.0, 1)
    assert colors[1] == description_regex(("colors",), continues=True) and colors[2:] == (0.6, 4)
    assert colors[0] == caption[0] + "caption: a red shoe on a white floor"
    assert rest[1] == description_regex(("tones", "objects"), continues=True)
    assert rest[2:] == (0.0, 1)
    assert rest[0].startswith(colors[0] + "\ncolors: ")
    assert response.text.endswith("\nobjects: shoe 0.80 [0.20,0.30,0.70,0.90]")
    assert [c.name for c in response.verbalization.colors] == ["white", "red"]
    assert [t.value for t in response.verbalization.tones] == ["warm", "bright"]


async def test_a_greedy_description_samples_only_its_objects_line(
    fake_backend: Any, grammar_backend: Any, context: Context
) -> None:
    backend = grammar_backend(fake_backend)
    describer = Describer(backend, make_settings(palette_samples=1, objects_temperature=0.8))

    await describer.describe(context=context, target=KpiTarget(level=KpiLevel.HIGH))

    head, objects = backend.calls
    assert head[1] == description_regex(("caption", "colors", "tones")) and head[2] == 0.0
    assert objects[1] == description_regex(("objects",), continues=True)
    assert objects[2] == 0.8
    assert objects[0].startswith(head[0] + "caption: a red shoe on a white floor\ncolors: ")
    assert objects[0].endswith("\ntones: warm, bright")


async def test_structured_decoding_on_a_backend_without_a_grammar_is_refused(
    fake_backend: Any, context: Context
) -> None:
    describer = Describer(fake_backend(), make_settings(describe_decoding="structured"))
    with pytest.raises(BackendError, match="cannot constrain"):
        await describer.describe(context=context, target=KpiTarget())
