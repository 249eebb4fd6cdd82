"""Resolving a request into what a job runs, how candidates split into pipeline calls, and
whose name the calls to the describer and scorer are timed under."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.common import metrics
from services.common.contracts import Context
from services.common.errors import UpstreamError
from services.common.generation import GenerateRequest
from services.common.model_folders import SamplingDefaults
from services.common.storage import LocalArtifactStore
from services.generator.runner import JobRunner, _batches, plan
from services.generator.settings import GeneratorSettings

CONTEXT = Context(account="acme", text="summer sale")


def settings(**overrides: object) -> GeneratorSettings:
    return GeneratorSettings.model_validate(
        {"default_strategy": "prompt", "default_steps": 20, "default_candidates": 4, **overrides}
    )


def test_defaults_come_from_settings_and_the_models_native_size() -> None:
    job = plan(GenerateRequest(context=CONTEXT, seed=9), settings(), (512, 768))
    assert (job.strategy, job.width, job.height, job.steps) == ("prompt", 512, 768, 20)
    assert job.count == job.candidates == 1 and job.seed == 9


def test_the_request_overrides_the_defaults() -> None:
    request = GenerateRequest(
        context=CONTEXT, seed=1, width=128, height=64, steps=3, count=2, strategy="boigsd"
    )
    job = plan(request, settings(), (512, 512))
    assert (job.strategy, job.width, job.height, job.steps, job.candidates) == (
        "boigsd",
        128,
        64,
        3,
        2,
    )


@pytest.mark.parametrize(
    ("count", "candidates", "expected"), [(1, None, 4), (6, None, 6), (2, 10, 10)]
)
def test_best_of_n_generates_at_least_count_candidates(
    count: int, candidates: int | None, expected: int
) -> None:
    request = GenerateRequest(
        context=CONTEXT, seed=1, count=count, candidates=candidates, strategy="best_of_n"
    )
    assert plan(request, settings(), (64, 64)).candidates == expected


def test_a_job_without_a_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        plan(GenerateRequest(context=CONTEXT), settings(), (64, 64))


def test_candidates_split_into_batches_keep_their_index() -> None:
    assert _batches(1, 8) == [(0, 1)]
    assert _batches(8, 8) == [(0, 8)]
    assert _batches(19, 8) == [(0, 8), (8, 8), (16, 3)]


def test_candidates_belong_to_best_of_n_only() -> None:
    with pytest.raises(ValueError, match="best_of_n"):
        GenerateRequest(context=CONTEXT, strategy="prompt", candidates=4)
    with pytest.raises(ValueError, match="at least count"):
        GenerateRequest(context=CONTEXT, count=4, candidates=2)


@pytest.mark.parametrize(
    ("configured", "recommended", "expected"), [(20, 25, 20), (None, 25, 25), (None, None, 20)]
)
def test_steps_come_from_settings_then_the_model_folder_then_the_fallback(
    configured: int | None, recommended: int | None, expected: int
) -> None:
    job = plan(
        GenerateRequest(context=CONTEXT, seed=1),
        settings(default_steps=configured),
        (64, 64),
        SamplingDefaults(steps=recommended),
    )
    assert job.steps == expected


@pytest.mark.parametrize(
    ("configured", "recommended", "expected"),
    [(5.0, 2.0, 5.0), (None, 2.0, 2.0), (None, None, 7.5)],
)
def test_guidance_comes_from_settings_then_the_model_folder_then_sd15s_usual(
    configured: float | None, recommended: float | None, expected: float
) -> None:
    class Folder:
        sampling = SamplingDefaults(guidance_scale=recommended)

    runner = JobRunner.__new__(JobRunner)  # the guidance rule needs no loaded pipeline
    runner.settings = settings(guidance_scale=configured)
    runner.pipeline = Folder()  # type: ignore[assignment]
    assert runner.guidance_scale == expected


def test_calls_to_the_describer_and_the_scorer_are_timed_as_the_generator_s(
    tmp_path: Path,
) -> None:
    def calls(upstream: str, route: str) -> float:
        labels = {
            "service": "generator",
            "upstream": upstream,
            "route": route,
            "outcome": "unreachable",
        }
        name = "boig_upstream_request_duration_seconds_count"
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = calls("describer", "/describe"), calls("scorer", "/score")
    down = settings(describer_url="http://127.0.0.1:1", scorer_url="http://127.0.0.1:1")
    pipeline: Any = None  # neither call reaches the pipeline
    runner = JobRunner(down, pipeline, LocalArtifactStore(tmp_path))
    request = GenerateRequest(context=CONTEXT, seed=1)
    with pytest.raises(UpstreamError, match="unreachable"):
        asyncio.run(runner._describe(request, []))
    with pytest.raises(UpstreamError, match="unreachable"):
        asyncio.run(runner._score(request, [b"not scored: the scorer is down"]))
    # The high description and the low one (for the negative prompt), then the score.
    assert calls("describer", "/describe") == before[0] + 2
    assert calls("scorer", "/score") == before[1] + 1
