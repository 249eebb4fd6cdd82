"""Reward components with hand-made verbalizations of known answers, plus property tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.colour import srgb_to_lab
from services.common.contracts import (
    TONE_AXES,
    ColorSwatch,
    DetectedObject,
    KpiLevel,
    LevelDistribution,
    Tone,
    Verbalization,
)
from services.scorer.rewards import (
    MatchWeights,
    box_iou,
    caption_similarity,
    contrastive_reward,
    likelihood_reward,
    match_reward,
    match_rewards,
    object_agreement,
    palette_similarity,
    tone_agreement,
)

DEFAULT = MatchWeights()
BLACK = ColorSwatch(name="black", rgb=(0, 0, 0), coverage=1.0)
WHITE = ColorSwatch(name="white", rgb=(255, 255, 255), coverage=1.0)


def swatch(rgb: tuple[int, int, int], coverage: float, name: str = "c") -> ColorSwatch:
    return ColorSwatch(name=name, rgb=rgb, coverage=coverage)


def obj(label: str, box: tuple[float, float, float, float]) -> DetectedObject:
    return DetectedObject(label=label, confidence=0.9, box=box)


RICH = Verbalization(
    caption="a runner on a city street",
    colors=[swatch((20, 30, 90), 0.41), swatch((245, 245, 245), 0.3), swatch((240, 120, 20), 0.12)],
    tones=[Tone.COOL, Tone.DARK, Tone.HIGH_CONTRAST, Tone.SATURATED],
    objects=[obj("person", (0.1, 0.2, 0.45, 0.95)), obj("car", (0.5, 0.55, 0.8, 0.9))],
)


# --- colour ------------------------------------------------------------------------------


def test_identical_palettes_are_fully_similar() -> None:
    assert palette_similarity(RICH.colors, RICH.colors) == pytest.approx(1.0)


def test_disjoint_palettes_are_nearly_dissimilar() -> None:
    similarity = palette_similarity([BLACK], [WHITE])
    assert similarity is not None
    assert similarity == pytest.approx(math.exp(-100 / 25), abs=1e-3)
    assert similarity < 0.02


def test_palette_similarity_falls_to_1_over_e_at_the_scale() -> None:
    # Greys differ in L* only, so ΔE between them is easy to compute independently.
    grey_a, grey_b = srgb_to_lab(np.array([[119, 119, 119], [145, 145, 145]]))
    delta = float(np.linalg.norm(grey_a - grey_b))
    similarity = palette_similarity(
        [swatch((119,) * 3, 1.0)], [swatch((145,) * 3, 1.0)], scale=delta
    )
    assert similarity == pytest.approx(math.exp(-1))


def test_palette_similarity_weights_by_coverage_both_ways() -> None:
    navy, orange = (20, 30, 90), (240, 120, 20)
    target = [swatch(navy, 1.0)]
    half_navy = [swatch(navy, 0.5), swatch(orange, 0.5)]
    mostly_navy = [swatch(navy, 0.9), swatch(orange, 0.1)]
    half, mostly = palette_similarity(target, half_navy), palette_similarity(target, mostly_navy)
    assert half is not None and mostly is not None
    # One way the navy is found perfectly; the other way the orange half barely matches navy.
    assert half == pytest.approx(0.75, abs=0.01)
    assert mostly > half


def test_palette_similarity_is_none_when_a_side_is_empty() -> None:
    assert palette_similarity([], [WHITE]) is None
    assert palette_similarity([WHITE], []) is None


def test_palette_of_zero_coverage_specks_counts_colours_equally() -> None:
    specks = [swatch((0, 0, 0), 0.0), swatch((255, 255, 255), 0.0)]
    assert palette_similarity(specks, specks) == pytest.approx(1.0)


# --- tones -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "image", "expected"),
    [
        ([Tone.WARM, Tone.DARK], [Tone.WARM, Tone.DARK], 1.0),
        ([Tone.WARM, Tone.DARK], [Tone.COOL, Tone.BRIGHT], 0.0),
        ([Tone.WARM, Tone.DARK], [Tone.WARM, Tone.BRIGHT], 0.5),
        ([Tone.WARM, Tone.DARK], [Tone.WARM], 0.75),  # silent on lightness: half agreement
        ([Tone.WARM, Tone.DARK], [], 0.5),
        ([Tone.SATURATED], [Tone.WARM, Tone.DARK, Tone.MUTED], 0.0),  # other axes do not count
        ([Tone.NEUTRAL], [Tone.NEUTRAL, Tone.BRIGHT], 1.0),
    ],
)
def test_tone_agreement(target: list[Tone], image: list[Tone], expected: float) -> None:
    assert tone_agreement(target, image) == pytest.approx(expected)


def test_tone_agreement_is_none_without_target_tones() -> None:
    assert tone_agreement([], [Tone.WARM]) is None


# --- objects -----------------------------------------------------------------------------


def test_box_shifted_by_half_its_width_has_iou_one_third() -> None:
    assert box_iou((0.0, 0.0, 0.5, 0.5), (0.25, 0.0, 0.75, 0.5)) == pytest.approx(1 / 3)


def test_object_shifted_by_half_scores_half_plus_half_iou() -> None:
    target = [obj("person", (0.0, 0.0, 0.5, 0.5))]
    image = [obj("person", (0.25, 0.0, 0.75, 0.5))]
    assert object_agreement(target, image) == pytest.approx(0.5 + 0.5 / 3)


def test_object_agreement_matches_by_label_not_by_list_order() -> None:
    target = [obj("person", (0.0, 0.0, 0.5, 0.5)), obj("car", (0.5, 0.5, 1.0, 1.0))]
    image = [obj("car", (0.5, 0.5, 1.0, 1.0)), obj("person", (0.0, 0.0, 0.5, 0.5))]
    assert object_agreement(target, image) == pytest.approx(1.0)


def test_object_agreement_hungarian_beats_greedy() -> None:
    # Greedy would give target A the image box that best fits it and leave B with nothing good.
    target = [obj("dog", (0.0, 0.0, 0.5, 0.5)), obj("dog", (0.25, 0.0, 0.75, 0.5))]
    image = [obj("dog", (0.1, 0.0, 0.6, 0.5)), obj("dog", (0.0, 0.0, 0.5, 0.5))]
    score = object_agreement(target, image)
    best = (1.0 + 0.5 + 0.5 * box_iou(target[1].box, image[0].box)) / 2
    assert score == pytest.approx(best)


def test_object_agreement_penalizes_missing_extra_and_wrong_objects() -> None:
    person = obj("person", (0.0, 0.0, 0.5, 0.5))
    assert object_agreement([person], [obj("car", person.box)]) == 0.0
    assert object_agreement([person], []) == 0.0
    assert object_agreement([person], [person, obj("car", (0.5, 0.5, 1.0, 1.0))]) == pytest.approx(
        0.5
    )
    assert object_agreement([person, person], [person]) == pytest.approx(0.5)


def test_object_agreement_is_none_without_target_objects() -> None:
    assert object_agreement([], [obj("car", (0.0, 0.0, 1.0, 1.0))]) is None


def test_degenerate_boxes_match_only_themselves() -> None:
    line = (0.5, 0.0, 0.5, 1.0)
    assert box_iou(line, line) == 1.0
    assert box_iou(line, (0.6, 0.0, 0.6, 1.0)) == 0.0


# --- caption -----------------------------------------------------------------------------


def test_caption_similarity_is_token_jaccard_and_needs_both_captions() -> None:
    assert caption_similarity("A red car", "a red bike") == pytest.approx(2 / 4)
    assert caption_similarity("A red car!", "a RED car") == 1.0
    assert caption_similarity("a red car", None) is None
    assert caption_similarity(None, None) is None


# --- match -------------------------------------------------------------------------------


def test_identical_verbalizations_match_perfectly() -> None:
    total, breakdown, weights = match_reward(RICH, RICH, DEFAULT)
    assert total == pytest.approx(1.0)
    assert breakdown == pytest.approx({"colors": 1.0, "tones": 1.0, "objects": 1.0, "caption": 1.0})
    # caption has weight 0 by default: reported in the breakdown, absent from the weighting.
    assert weights == pytest.approx({"colors": 0.5, "tones": 0.2, "objects": 0.3})


def test_missing_terms_are_skipped_and_weights_renormalized() -> None:
    target = Verbalization(colors=[BLACK], tones=[Tone.DARK])  # no objects in the target
    image = Verbalization(colors=[BLACK], tones=[Tone.BRIGHT], objects=[obj("car", (0, 0, 1, 1))])
    total, breakdown, weights = match_reward(image, target, DEFAULT)
    assert weights == pytest.approx({"colors": 0.5 / 0.7, "tones": 0.2 / 0.7})
    assert breakdown == pytest.approx({"colors": 1.0, "tones": 0.0})
    assert total == pytest.approx(0.5 / 0.7)


def test_caption_term_counts_once_weighted_and_both_sides_captioned() -> None:
    weights = MatchWeights(colors=0.5, tones=0.0, objects=0.0, caption=0.5)
    target = Verbalization(caption="a red car", colors=[BLACK])
    image = Verbalization(caption="a red bike", colors=[BLACK])
    assert match_reward(image, target, weights).total == pytest.approx(0.5 + 0.5 * 0.5)
    uncaptioned = image.model_copy(update={"caption": None})
    assert match_reward(uncaptioned, target, weights).weights == {"colors": 1.0}


def test_batch_shares_one_weighting_so_totals_stay_comparable() -> None:
    weights = MatchWeights(colors=0.5, tones=0.0, objects=0.0, caption=0.5)
    target = Verbalization(caption="a red car", colors=[BLACK])
    captioned = Verbalization(caption="a blue boat", colors=[BLACK])
    uncaptioned = Verbalization(colors=[BLACK])
    rewards = match_rewards([captioned, uncaptioned], target, weights)
    assert [reward.weights for reward in rewards] == [{"colors": 1.0}, {"colors": 1.0}]
    assert rewards[0].total == rewards[1].total == pytest.approx(1.0)
    assert rewards[0].breakdown["caption"] == pytest.approx(1 / 5)  # reported, not weighted


def test_empty_target_scores_zero_with_no_weights() -> None:
    assert match_reward(RICH, Verbalization(), DEFAULT) == (0.0, {}, {})


def test_match_weights_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        MatchWeights(colors=0, tones=0, objects=0, caption=0)
    with pytest.raises(ValueError, match="non-negative"):
        MatchWeights(colors=-1.0)


# --- contrastive and likelihood ----------------------------------------------------------


def test_contrastive_prefers_the_high_description() -> None:
    high = Verbalization(colors=[WHITE], tones=[Tone.BRIGHT])
    low = Verbalization(colors=[BLACK], tones=[Tone.DARK])
    total, breakdown, weights = contrastive_reward(high, high, low, DEFAULT)
    assert weights == pytest.approx({"colors": 0.5 / 0.7, "tones": 0.2 / 0.7})
    assert breakdown["tones"] == pytest.approx(1.0)
    assert breakdown["colors"] == pytest.approx(1.0 - math.exp(-4), abs=1e-3)
    assert 0.9 < total <= 1.0
    assert contrastive_reward(low, high, low, DEFAULT).total == pytest.approx(-total)


def test_contrastive_uses_terms_present_against_both_descriptions() -> None:
    high = Verbalization(colors=[WHITE], objects=[obj("car", (0, 0, 1, 1))])
    low = Verbalization(colors=[BLACK])  # no objects: the object term cannot be contrasted
    reward = contrastive_reward(Verbalization(colors=[WHITE]), high, low, DEFAULT)
    assert reward.weights == {"colors": 1.0}
    assert set(reward.breakdown) == {"colors"}


def test_likelihood_reward_reads_the_level_distribution() -> None:
    distribution = LevelDistribution(
        probabilities={KpiLevel.LOW: 0.2, KpiLevel.MEDIUM: 0.3, KpiLevel.HIGH: 0.5},
        expected_percentile=0.77,
    )
    total, breakdown, weights = likelihood_reward(distribution)
    assert total == 0.77
    assert breakdown == {"p_low": 0.2, "p_medium": 0.3, "p_high": 0.5, "expected_percentile": 0.77}
    assert weights == {"expected_percentile": 1.0}


# --- properties --------------------------------------------------------------------------

channels = st.integers(0, 255)
labels = st.sampled_from(["person", "car", "dog"])


@st.composite
def palettes(draw: st.DrawFn, min_size: int = 0) -> list[ColorSwatch]:
    raw = draw(st.lists(st.integers(0, 100), min_size=min_size, max_size=6))
    total = sum(raw) or 1
    return [
        swatch((draw(channels), draw(channels), draw(channels)), int(100 * part / total) / 100)
        for part in raw
    ]


@st.composite
def boxes(draw: st.DrawFn) -> tuple[float, float, float, float]:
    xs = sorted(draw(st.integers(0, 100)) / 100 for _ in range(2))
    ys = sorted(draw(st.integers(0, 100)) / 100 for _ in range(2))
    return (xs[0], ys[0], xs[1], ys[1])


@st.composite
def verbalizations(draw: st.DrawFn) -> Verbalization:
    tones = [
        draw(st.sampled_from(axis_tones))
        for axis_tones in TONE_AXES.values()
        if draw(st.booleans())
    ]
    objects = draw(st.lists(st.builds(obj, labels, boxes()), max_size=4))
    caption = draw(st.one_of(st.none(), st.sampled_from(["a red car", "a dog", "red dog park"])))
    return Verbalization(caption=caption, colors=draw(palettes()), tones=tones, objects=objects)


weight_sets = st.builds(
    MatchWeights,
    colors=st.floats(0.1, 1.0),
    tones=st.floats(0, 1.0),
    objects=st.floats(0, 1.0),
    caption=st.floats(0, 1.0),
)


@settings(max_examples=150, deadline=None, database=None)
@given(image=verbalizations(), target=verbalizations(), weights=weight_sets)
def test_match_total_and_terms_are_in_unit_interval(
    image: Verbalization, target: Verbalization, weights: MatchWeights
) -> None:
    total, breakdown, used = match_reward(image, target, weights)
    assert 0.0 <= total <= 1.0
    assert all(0.0 <= value <= 1.0 for value in breakdown.values())
    assert not used or sum(used.values()) == pytest.approx(1.0)


@settings(max_examples=150, deadline=None, database=None)
@given(a=verbalizations(), b=verbalizations())
def test_match_is_symmetric_in_the_palette_term(a: Verbalization, b: Verbalization) -> None:
    ab = match_reward(a, b, DEFAULT).breakdown.get("colors")
    ba = match_reward(b, a, DEFAULT).breakdown.get("colors")
    assert (ab is None) == (ba is None)
    if ab is not None and ba is not None:
        assert ab == pytest.approx(ba)


@settings(max_examples=100, deadline=None, database=None)
@given(a=palettes(min_size=1))
def test_a_palette_is_fully_similar_to_itself(a: list[ColorSwatch]) -> None:
    assert palette_similarity(a, a) == pytest.approx(1.0)


@settings(max_examples=150, deadline=None, database=None)
@given(image=verbalizations(), high=verbalizations(), low=verbalizations(), weights=weight_sets)
def test_contrastive_is_antisymmetric_in_high_and_low(
    image: Verbalization, high: Verbalization, low: Verbalization, weights: MatchWeights
) -> None:
    forward = contrastive_reward(image, high, low, weights)
    backward = contrastive_reward(image, low, high, weights)
    assert -1.0 <= forward.total <= 1.0
    assert forward.total == pytest.approx(-backward.total, abs=1e-12)
    assert forward.breakdown == pytest.approx({k: -v for k, v in backward.breakdown.items()})
