"""Resolving a request into what a job runs, how candidates split into pipeline calls, whose
name the calls to the describer and scorer are timed under, and what the scorer is asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common import metrics
from services.common.contracts import (
    Context,
    CreativeScore,
    DescribeResponse,
    GenerateRequest,
    KpiLevel,
    KpiTarget,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
    Tone,
    Verbalization,
)
from services.common.errors import UpstreamError
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
    try:
        with pytest.raises(UpstreamError, match="unreachable"):
            runner._loop.run(runner._describe(request, []))
        with pytest.raises(UpstreamError, match="unreachable"):
            runner._loop.run(runner._score(request, [b"not scored: the scorer is down"], {}))
    finally:
        runner.close()
    # The high description and the low one (for the negative prompt), then the score.
    assert calls("describer", "/describe") == before[0] + 2
    assert calls("scorer", "/score") == before[1] + 1


class _Control:
    def check(self) -> None:
        pass

    def report(self, progress: object) -> None:
        pass


def _described(tone: Tone) -> DescribeResponse:
    return DescribeResponse(
        verbalization=Verbalization(tones=[tone]),
        text=tone.value,
        repairs=[],
        model=ModelInfo(name="boigllm", version="7"),
        prompt_version="v1",
        cached=False,
    )


class _RecordingScorer:
    def __init__(self) -> None:
        self.requests: list[ScoreRequest] = []

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        self.requests.append(request)
        return ScoreResponse(
            reward=request.reward,
            weights={"palette": 1.0},
            targets=request.targets,
            results=[
                CreativeScore(
                    id=creative.id,
                    rank=rank,
                    total=0.5,
                    breakdown={},
                    verbalization=Verbalization(),
                )
                for rank, creative in enumerate(request.creatives, start=1)
            ],
            models={},
        )

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("reward", "sent"),
    [
        ("match", [KpiLevel.HIGH]),
        ("contrastive", [KpiLevel.HIGH, KpiLevel.LOW]),
        ("likelihood", []),  # compares with no description
    ],
)
def test_images_are_scored_against_the_descriptions_they_were_prompted_with(
    tmp_path: Path,
    tiny_sd_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    reward: str,
    sent: list[KpiLevel],
) -> None:
    from services.generator.pipeline import ImagePipeline

    runner = JobRunner(
        settings(reward=reward, default_steps=2),
        ImagePipeline(tiny_sd_dir),
        LocalArtifactStore(tmp_path),
    )
    answers = {KpiLevel.HIGH: _described(Tone.WARM), KpiLevel.LOW: _described(Tone.COOL)}

    async def describe(*_: object) -> tuple[DescribeResponse, DescribeResponse]:
        return answers[KpiLevel.HIGH], answers[KpiLevel.LOW]

    scorer = _RecordingScorer()
    monkeypatch.setattr(runner, "_describe", describe)
    monkeypatch.setattr(runner, "_scorer", scorer)
    try:
        runner.run(GenerateRequest(context=CONTEXT, seed=3, count=1), _Control())
    finally:
        runner.close()
    (request,) = scorer.requests
    assert [target.level for target in request.targets] == sent
    for target in request.targets:
        assert target.verbalization == answers[target.level].verbalization
        assert target.model == ModelInfo(name="boigllm", version="7")


def test_a_low_target_is_scored_against_its_own_description_only(
    tmp_path: Path, tiny_sd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.generator.pipeline import ImagePipeline

    runner = JobRunner(
        settings(default_steps=2), ImagePipeline(tiny_sd_dir), LocalArtifactStore(tmp_path)
    )

    async def describe(*_: object) -> tuple[DescribeResponse, None]:
        return _described(Tone.DARK), None

    scorer = _RecordingScorer()
    monkeypatch.setattr(runner, "_describe", describe)
    monkeypatch.setattr(runner, "_scorer", scorer)
    low = KpiTarget(level=KpiLevel.LOW)
    try:
        runner.run(GenerateRequest(context=CONTEXT, target=low, seed=3, count=1), _Control())
    finally:
        runner.close()
    (request,) = scorer.requests
    assert [target.level for target in request.targets] == [KpiLevel.LOW]
    assert request.targets[0].verbalization.tones == [Tone.DARK]
