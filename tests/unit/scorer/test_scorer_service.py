"""The Scorer's orchestration with in-memory fake clients: what it asks, how it ranks."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from services.common.clients import DescriberClient, FeaturizerClient
from services.common.contracts import (
    ColorSwatch,
    Context,
    Creative,
    DescribeResponse,
    FeaturizeResponse,
    FeaturizeResult,
    ImageInput,
    KpiLevel,
    KpiTarget,
    LevelDistribution,
    LikelihoodResponse,
    ModelInfo,
    ScoreRequest,
    TargetDescription,
    Verbalization,
)
from services.common.errors import InvalidImage, InvalidInput, ModelUnavailable, UpstreamError
from services.common.settings import BatchLimits
from services.scorer.rewards import MatchWeights
from services.scorer.service import Scorer
from services.scorer.settings import ScorerSettings

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREY = (128, 128, 128)


def palette(rgb: tuple[int, int, int]) -> Verbalization:
    return Verbalization(colors=[ColorSwatch(name="c", rgb=rgb, coverage=1.0)])


class FakeFeaturizer(FeaturizerClient):
    """Reads the colour of each 'image' from its bytes: 'red', 'blue' or 'grey'."""

    def __init__(self, *, drop_one: bool = False, delay: float = 0.0) -> None:
        super().__init__("http://featurizer.invalid")
        self.calls: list[list[ImageInput]] = []
        self.drop_one = drop_one
        self.delay = delay

    async def featurize(
        self, images: list[ImageInput], *, detect_objects: bool = True
    ) -> FeaturizeResponse:
        self.calls.append(images)
        await asyncio.sleep(self.delay)
        colors = {"red": RED, "blue": BLUE, "grey": GREY}
        results = [
            FeaturizeResult(
                id=image.id, width=8, height=8, verbalization=palette(colors[image.data.decode()])
            )
            for image in images
        ]
        if self.drop_one:
            results = results[1:]
        return FeaturizeResponse(
            results=results,
            featurizer_version="fake-1",
            detector=ModelInfo(name="yolo-test", version="abc"),
        )


class FakeDescriber(DescriberClient):
    """High is red, everything else is blue; likelihood says red is high."""

    def __init__(self, *, fail: Exception | None = None, delay: float = 0.0) -> None:
        super().__init__("http://describer.invalid")
        self.described: list[KpiTarget] = []
        self.fail = fail
        self.delay = delay

    async def describe(self, context: Context, target: KpiTarget) -> DescribeResponse:
        self.described.append(target)
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        verbalization = palette(RED if target.level is KpiLevel.HIGH else BLUE)
        return DescribeResponse(
            verbalization=verbalization,
            text=f"brief for {target.level}",
            repairs=[],
            model=ModelInfo(name="boigllm-test", version="v1"),
            prompt_version="p1",
            cached=False,
        )

    async def likelihood(
        self, context: Context, verbalizations: list[Verbalization], *, kpi_name: str = "likes"
    ) -> LikelihoodResponse:
        results = []
        for verbalization in verbalizations:
            p_high = 0.8 if verbalization.colors[0].rgb == RED else 0.1
            results.append(
                LevelDistribution(
                    probabilities={
                        KpiLevel.LOW: 1 - p_high - 0.1,
                        KpiLevel.MEDIUM: 0.1,
                        KpiLevel.HIGH: p_high,
                    },
                    expected_percentile=p_high,
                )
            )
        return LikelihoodResponse(
            results=results, model=ModelInfo(name="boigllm-test", version="v2"), prompt_version="p1"
        )


def request(
    reward: str,
    colors: dict[str, str],
    level: KpiLevel = KpiLevel.HIGH,
    targets: tuple[TargetDescription, ...] = (),
    max_edits: int = 0,
) -> ScoreRequest:
    return ScoreRequest.model_validate(
        {
            "context": {"account": "acme", "text": "spring sale"},
            "target": {"name": "likes", "level": level},
            "reward": reward,
            "creatives": [Creative(id=cid, data=color.encode()) for cid, color in colors.items()],
            "targets": targets,
            "max_edits": max_edits,
        }
    )


def given(level: KpiLevel, rgb: tuple[int, int, int]) -> TargetDescription:
    """A description the caller brings, as the generator does with the one it prompted with."""
    return TargetDescription(level=level, verbalization=palette(rgb), text="given")


def scorer(
    featurizer: FeaturizerClient | None = None, describer: DescriberClient | None = None
) -> Scorer:
    return Scorer(
        featurizer=featurizer or FakeFeaturizer(),
        describer=describer or FakeDescriber(),
        weights=MatchWeights(),
        batch_limits=BatchLimits(max_items=4),
    )


async def test_match_ranks_the_creative_closest_to_the_target_first() -> None:
    featurizer, describer = FakeFeaturizer(), FakeDescriber()
    response = await scorer(featurizer, describer).score(
        request("match", {"b": "blue", "r": "red", "g": "grey"})
    )
    assert [r.id for r in response.results] == ["r", "g", "b"]
    assert [r.rank for r in response.results] == [1, 2, 3]
    assert response.results[0].total == pytest.approx(1.0)
    assert response.weights == {"colors": 1.0}
    assert [t.level for t in response.targets] == [KpiLevel.HIGH]
    assert response.targets[0].text == "brief for high"
    assert describer.described == [KpiTarget(name="likes", level=KpiLevel.HIGH)]
    # The scorer forwards the files untouched, with the creative ids, in one batch.
    assert featurizer.calls == [
        [
            ImageInput(id="b", data=b"blue"),
            ImageInput(id="r", data=b"red"),
            ImageInput(id="g", data=b"grey"),
        ]
    ]
    assert response.models == {
        "featurizer": ModelInfo(name="featurizer", version="fake-1"),
        "detector": ModelInfo(name="yolo-test", version="abc"),
        "describer": ModelInfo(name="boigllm-test", version="v1"),
    }


async def test_ties_rank_by_id() -> None:
    response = await scorer().score(request("match", {"z": "red", "a": "red", "m": "red"}))
    assert [r.id for r in response.results] == ["a", "m", "z"]


async def test_contrastive_describes_high_and_low_whatever_the_requested_level() -> None:
    describer = FakeDescriber()
    response = await scorer(describer=describer).score(
        request("contrastive", {"b": "blue", "r": "red"}, level=KpiLevel.MEDIUM)
    )
    assert sorted(t.level for t in describer.described) == [KpiLevel.HIGH, KpiLevel.LOW]
    assert [t.level for t in response.targets] == [KpiLevel.HIGH, KpiLevel.LOW]
    assert [r.id for r in response.results] == ["r", "b"]
    assert response.results[0].total > 0.9
    assert response.results[1].total == pytest.approx(-response.results[0].total)


async def test_a_given_target_is_used_instead_of_asking_the_describer() -> None:
    # The describer would say red; the caller prompted with blue, so blue ranks first.
    describer = FakeDescriber()
    response = await scorer(describer=describer).score(
        request("match", {"b": "blue", "r": "red"}, targets=(given(KpiLevel.HIGH, BLUE),))
    )
    assert describer.described == []
    assert [r.id for r in response.results] == ["b", "r"]
    assert response.targets == [given(KpiLevel.HIGH, BLUE)]
    assert "describer" not in response.models  # no model wrote the description


async def test_levels_the_request_brings_no_description_of_are_described() -> None:
    describer = FakeDescriber()
    response = await scorer(describer=describer).score(
        request("contrastive", {"b": "blue", "r": "red"}, targets=(given(KpiLevel.LOW, RED),))
    )
    assert describer.described == [KpiTarget(name="likes", level=KpiLevel.HIGH)]
    assert [t.text for t in response.targets] == ["brief for high", "given"]
    assert response.models["describer"] == ModelInfo(name="boigllm-test", version="v1")


def test_targets_are_one_per_level_and_only_for_the_levels_the_reward_compares_with() -> None:
    twice = (given(KpiLevel.HIGH, RED), given(KpiLevel.HIGH, BLUE))
    with pytest.raises(ValidationError, match="one description per level"):
        request("match", {"r": "red"}, targets=twice)
    with pytest.raises(ValidationError, match=r"likelihood reward .* no description for high"):
        request("likelihood", {"r": "red"}, targets=(given(KpiLevel.HIGH, RED),))
    with pytest.raises(ValidationError, match=r"match reward .* no description for low"):
        request("match", {"r": "red"}, targets=(given(KpiLevel.LOW, RED),))
    medium = (given(KpiLevel.MEDIUM, RED),)
    with pytest.raises(ValidationError, match=r"contrastive reward .* for medium"):
        request("contrastive", {"r": "red"}, targets=medium)


async def test_a_callers_word_on_the_model_is_never_reported_as_the_describer() -> None:
    claimed = given(KpiLevel.HIGH, BLUE).model_copy(
        update={"model": ModelInfo(name="boigllm", version="not-really")}
    )
    response = await scorer().score(request("match", {"b": "blue"}, targets=(claimed,)))
    assert "describer" not in response.models
    assert response.targets == [claimed]  # echoed as the caller sent it


async def test_likelihood_uses_the_featurized_verbalizations() -> None:
    response = await scorer().score(request("likelihood", {"b": "blue", "r": "red"}))
    assert [r.id for r in response.results] == ["r", "b"]
    assert response.results[0].total == pytest.approx(0.8)
    assert response.results[0].breakdown["p_high"] == pytest.approx(0.8)
    assert response.targets == []
    assert response.weights == {"expected_percentile": 1.0}
    assert response.models["describer"].version == "v2"


async def test_featurize_and_describe_run_concurrently() -> None:
    # Three calls of 0.3 s each: about 0.3 s together, 0.9 s one after another.
    slow = scorer(FakeFeaturizer(delay=0.3), FakeDescriber(delay=0.3))
    started = asyncio.get_running_loop().time()
    await slow.score(request("contrastive", {"r": "red"}))
    assert asyncio.get_running_loop().time() - started < 0.6


async def test_upstream_typed_errors_pass_through_unchanged() -> None:
    failing = FakeDescriber(fail=ModelUnavailable("describer model is loading"))
    with pytest.raises(ModelUnavailable, match="loading"):
        await scorer(describer=failing).score(request("contrastive", {"r": "red"}))
    bad_image = FakeDescriber(fail=InvalidImage("image 'r' is truncated"))
    with pytest.raises(InvalidImage):
        await scorer(describer=bad_image).score(request("match", {"r": "red"}))


async def test_a_featurizer_that_loses_an_image_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="different set of images"):
        await scorer(FakeFeaturizer(drop_one=True)).score(
            request("match", {"a": "red", "b": "red"})
        )


async def test_too_many_creatives_are_refused_before_any_upstream_call() -> None:
    featurizer = FakeFeaturizer()
    colors = {f"c{i}": "red" for i in range(5)}
    with pytest.raises(InvalidInput, match="limit is 4") as caught:
        await scorer(featurizer).score(request("match", colors))
    assert caught.value.status_code == 422
    assert featurizer.calls == []


def test_settings_defaults_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ScorerSettings()
    assert settings.port == 8103
    assert settings.match_weights() == MatchWeights(colors=0.5, tones=0.2, objects=0.3, caption=0.0)
    monkeypatch.setenv("BOIG_SCORER_WEIGHT_CAPTION", "0.25")
    assert ScorerSettings().match_weights().caption == 0.25
    with pytest.raises(ValueError, match="positive"):
        ScorerSettings(weight_colors=0, weight_tones=0, weight_objects=0, weight_caption=0)
    with pytest.raises(ValueError):
        ScorerSettings(batch_limits={"max_items": 65})  # type: ignore[arg-type]
    assert all(field.description for field in ScorerSettings.model_fields.values())


async def test_edits_are_suggested_only_when_asked() -> None:
    plain = await scorer().score(request("match", {"g": "grey", "r": "red"}))
    assert all(r.edits == [] and r.total_with_edits is None for r in plain.results)

    asked = await scorer().score(request("match", {"g": "grey", "r": "red"}, max_edits=3))
    by_id = {result.id: result for result in asked.results}
    assert [r.total for r in asked.results] == [r.total for r in plain.results]
    assert by_id["r"].edits == [] and by_id["r"].total_with_edits is None  # it is the target
    (edit,) = by_id["g"].edits
    assert edit.kind == "recolor"
    assert edit.summary == "background c (128,128,128) → c (220,20,20) (covers 100%)"
    assert edit.reward == pytest.approx(by_id["r"].total)
    assert edit.gain == pytest.approx(edit.reward - by_id["g"].total)
    assert by_id["g"].total_with_edits == pytest.approx(edit.reward)


async def test_contrastive_edits_are_scored_with_the_contrastive_reward() -> None:
    response = await scorer().score(
        request("contrastive", {"b": "blue", "g": "grey", "r": "red"}, max_edits=2)
    )
    by_id = {result.id: result for result in response.results}
    # Repainting blue (the low description's colour) red is worth the whole range: -1 to 1.
    (edit,) = by_id["b"].edits
    assert edit.after is not None and edit.after.color is not None
    assert edit.after.color.rgb == RED
    assert edit.reward == pytest.approx(by_id["r"].total)
    assert edit.gain == pytest.approx(by_id["r"].total - by_id["b"].total)
    assert edit.gain > 1.5
    assert by_id["g"].edits[0].reward == pytest.approx(by_id["r"].total)


async def test_edits_follow_a_target_the_caller_brought() -> None:
    response = await scorer().score(
        request("match", {"r": "red"}, targets=(given(KpiLevel.HIGH, BLUE),), max_edits=1)
    )
    (edit,) = response.results[0].edits
    assert edit.after is not None and edit.after.color is not None
    assert edit.after.color.rgb == BLUE
