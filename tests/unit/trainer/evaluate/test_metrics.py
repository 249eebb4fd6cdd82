"""Evaluation metrics on hand-made rows whose answers are worked out in the comments."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from services.common.contracts import ColorSwatch, DetectedObject, Tone, Verbalization
from services.trainer.evaluate.metrics import (
    DESCRIPTION_METRIC_FUNCTIONS,
    MAX_COVERAGE_RMSE,
    MAX_RGB_DISTANCE,
    MIN_CAPTION_COSINE,
    MiniLmEmbedder,
    caption_cosine,
    coverage_rmse,
    level_accuracy,
    matched_box_iou,
    object_label_iou,
    palette_rgb_distance,
    spearman,
    tone_agreement,
)
from services.trainer.evaluate.results import DESCRIPTION_METRICS

Box = tuple[float, float, float, float]


def objects(*items: tuple[str, Box]) -> Verbalization:
    return Verbalization(
        objects=[DetectedObject(label=label, confidence=0.9, box=box) for label, box in items]
    )


def labels(*names: str) -> Verbalization:
    return objects(*((name, (0.0, 0.0, 1.0, 1.0)) for name in names))


def palette(*items: tuple[tuple[int, int, int], float]) -> Verbalization:
    return Verbalization(
        colors=[
            ColorSwatch(name=f"c{i}", rgb=rgb, coverage=cov) for i, (rgb, cov) in enumerate(items)
        ]
    )


FULL = Verbalization(
    caption="a red shoe on a white floor",
    colors=[
        ColorSwatch(name="red", rgb=(200, 20, 30), coverage=0.4),
        ColorSwatch(name="white", rgb=(250, 250, 250), coverage=0.5),
    ],
    tones=[Tone.WARM, Tone.BRIGHT, Tone.HIGH_CONTRAST, Tone.SATURATED],
    objects=[
        DetectedObject(label="shoe", confidence=0.9, box=(0.1, 0.2, 0.5, 0.6)),
        DetectedObject(label="shoe", confidence=0.8, box=(0.5, 0.2, 0.9, 0.6)),
        DetectedObject(label="dog", confidence=0.7, box=(0.0, 0.7, 0.3, 1.0)),
    ],
)


def test_registry_covers_every_description_metric_but_the_caption() -> None:
    keys = {spec.key for spec in DESCRIPTION_METRICS} - {"caption_cosine"}
    assert set(DESCRIPTION_METRIC_FUNCTIONS) == keys


def test_identical_verbalizations_score_perfectly() -> None:
    scores = {key: fn(FULL, FULL) for key, fn in DESCRIPTION_METRIC_FUNCTIONS.items()}
    assert scores == {
        "object_label_iou": 1.0,
        "matched_box_iou": 1.0,
        "palette_rgb_distance": 0.0,
        "coverage_rmse": 0.0,
        "tone_agreement": 1.0,
    }


# --- failed descriptions -----------------------------------------------------------------


def test_a_failure_scores_the_worst_value_of_every_metric() -> None:
    scores = {key: fn(None, FULL) for key, fn in DESCRIPTION_METRIC_FUNCTIONS.items()}
    assert scores == {
        "object_label_iou": 0.0,
        "matched_box_iou": 0.0,
        "palette_rgb_distance": MAX_RGB_DISTANCE,
        "coverage_rmse": 1.0,
        "tone_agreement": 0.0,
    }
    assert MAX_COVERAGE_RMSE == 1.0
    assert caption_cosine(None, FULL, fake_embed_any) == MIN_CAPTION_COSINE == -1.0


def test_a_failure_scores_below_an_empty_answer() -> None:
    # The bug this guards: an empty description for a failure scored 1.0 on an object-less
    # scene, and an empty palette only the truth's coverages as RMSE (here about 0.32).
    scene = Verbalization(colors=FULL.colors, tones=FULL.tones)
    assert object_label_iou(Verbalization(), scene) == 1.0
    assert object_label_iou(None, scene) == 0.0
    empty_rmse = coverage_rmse(Verbalization(), scene)
    assert empty_rmse == pytest.approx(math.sqrt((0.4**2 + 0.5**2) / 2))
    assert coverage_rmse(None, scene) == 1.0
    assert matched_box_iou(Verbalization(), scene) is None
    assert matched_box_iou(None, scene) == 0.0  # answers are scored here, so failures are too


def test_a_failure_is_not_scored_where_the_truth_makes_a_metric_inapplicable() -> None:
    bare = Verbalization()  # no caption, colours or tones
    assert palette_rgb_distance(None, bare) is None
    assert coverage_rmse(None, bare) is None
    assert tone_agreement(None, bare) is None
    assert caption_cosine(None, bare, fake_embed_any) is None


def fake_embed_any(texts: Sequence[str]) -> np.ndarray:
    """Any caption embeds to the same vector: the failure cases must not reach it."""
    return np.ones((len(texts), 2))


# --- object labels -----------------------------------------------------------------------


def test_label_iou_is_jaccard_of_label_sets() -> None:
    # {a, b} & {b, c} = {b}; {a, b} | {b, c} = {a, b, c}
    assert object_label_iou(labels("a", "b"), labels("b", "c")) == pytest.approx(1 / 3)


def test_label_iou_counts_each_label_once() -> None:
    assert object_label_iou(labels("a", "a", "a"), labels("a")) == 1.0


def test_label_iou_rewards_correctly_predicting_no_objects() -> None:
    assert object_label_iou(Verbalization(), Verbalization()) == 1.0
    assert object_label_iou(Verbalization(), labels("a")) == 0.0
    assert object_label_iou(labels("a"), Verbalization()) == 0.0


# --- boxes -------------------------------------------------------------------------------


def test_matched_box_iou_one_exact_one_half_shifted() -> None:
    truth = objects(("shoe", (0.0, 0.0, 0.2, 0.2)), ("bag", (0.2, 0.2, 0.6, 0.6)))
    predicted = objects(("bag", (0.4, 0.2, 0.8, 0.6)), ("shoe", (0.0, 0.0, 0.2, 0.2)))
    # (1 + 1/3) / 2
    assert matched_box_iou(predicted, truth) == pytest.approx(2 / 3)


def test_matched_box_iou_ignores_pairs_of_different_labels() -> None:
    box = (0.1, 0.1, 0.5, 0.5)
    assert matched_box_iou(objects(("cat", box)), objects(("dog", box))) == 0.0


def test_matched_box_iou_finds_the_best_assignment_not_the_greedy_one() -> None:
    truth = objects(("a", (0.0, 0.0, 0.4, 0.4)), ("a", (0.0, 0.0, 0.2, 0.4)))
    predicted = objects(("a", (0.0, 0.0, 0.3, 0.4)), ("a", (0.2, 0.0, 0.5, 0.4)))
    # IoU matrix (rows predicted, columns truth):
    #   p0: t0 0.12/0.16 = 3/4,  t1 0.08/0.12 = 2/3
    #   p1: t0 0.08/0.20 = 2/5,  t1 0
    # Greedy (best pair first) and positional pairing both give (3/4 + 0) / 2 = 3/8;
    # the optimum pairs p0-t1 and p1-t0: (2/3 + 2/5) / 2 = 8/15.
    assert matched_box_iou(predicted, truth) == pytest.approx(8 / 15)


def test_matched_box_iou_counts_unmatched_boxes_as_zero() -> None:
    box = (0.1, 0.1, 0.5, 0.5)
    other = (0.6, 0.6, 0.9, 0.9)
    # One exact match out of max(1, 3) boxes.
    assert matched_box_iou(objects(("a", box)), objects(("a", box), ("a", other), ("b", box))) == (
        pytest.approx(1 / 3)
    )
    assert matched_box_iou(objects(("a", box), ("a", other)), objects(("a", box))) == (
        pytest.approx(1 / 2)
    )


def test_matched_box_iou_edge_cases() -> None:
    assert matched_box_iou(Verbalization(), Verbalization()) is None
    assert matched_box_iou(Verbalization(), labels("a")) == 0.0
    assert matched_box_iou(labels("a"), Verbalization()) == 0.0


# --- colours -----------------------------------------------------------------------------


def test_palette_distance_matches_colours_not_positions() -> None:
    truth = palette(((255, 0, 0), 0.5), ((0, 0, 255), 0.3))
    swapped = palette(((0, 0, 255), 0.3), ((255, 0, 0), 0.5))
    assert palette_rgb_distance(swapped, truth) == 0.0
    assert coverage_rmse(swapped, truth) == 0.0


def test_palette_distance_of_red_against_black_is_255() -> None:
    assert palette_rgb_distance(palette(((255, 0, 0), 0.5)), palette(((0, 0, 0), 0.5))) == 255.0


def test_palette_distance_averages_matched_pairs_of_the_shorter_palette() -> None:
    # Pred red matches truth (245, 0, 0) at 10, pred black matches (0, 0, 20) at 20; the
    # truth's white has no partner left and does not enter the mean. (10 + 20) / 2
    predicted = palette(((0, 0, 0), 0.5), ((255, 0, 0), 0.5))
    truth = palette(((245, 0, 0), 0.3), ((255, 255, 255), 0.3), ((0, 0, 20), 0.3))
    assert palette_rgb_distance(predicted, truth) == pytest.approx(15.0)


def test_palette_distance_edge_cases() -> None:
    some = palette(((10, 20, 30), 0.5))
    assert palette_rgb_distance(some, Verbalization()) is None
    assert palette_rgb_distance(Verbalization(), some) == MAX_RGB_DISTANCE
    assert pytest.approx(255 * math.sqrt(3)) == MAX_RGB_DISTANCE


def test_coverage_rmse_with_an_unmatched_true_colour() -> None:
    # red 0.4 vs 0.5 -> 0.01; blue missed -> 0.3^2 = 0.09; sqrt(0.10 / 2)
    predicted = palette(((250, 0, 0), 0.4))
    truth = palette(((255, 0, 0), 0.5), ((0, 0, 255), 0.3))
    assert coverage_rmse(predicted, truth) == pytest.approx(math.sqrt(0.05))


def test_coverage_rmse_with_an_invented_colour() -> None:
    # red exact -> 0; invented green 0.2 -> 0.04; sqrt(0.04 / 2)
    predicted = palette(((255, 0, 0), 0.5), ((0, 255, 0), 0.2))
    truth = palette(((255, 0, 0), 0.5))
    assert coverage_rmse(predicted, truth) == pytest.approx(math.sqrt(0.02))


def test_coverage_rmse_edge_cases() -> None:
    truth = palette(((255, 0, 0), 0.3), ((0, 0, 255), 0.4))
    # sqrt((0.09 + 0.16) / 2)
    assert coverage_rmse(Verbalization(), truth) == pytest.approx(math.sqrt(0.125))
    assert coverage_rmse(truth, Verbalization()) is None


# --- tones -------------------------------------------------------------------------------


def test_tone_agreement_two_of_four_axes() -> None:
    truth = Verbalization(tones=[Tone.WARM, Tone.DARK, Tone.HIGH_CONTRAST, Tone.SATURATED])
    # warmth agrees, lightness disagrees, contrast agrees, saturation is missing.
    predicted = Verbalization(tones=[Tone.WARM, Tone.BRIGHT, Tone.HIGH_CONTRAST])
    assert tone_agreement(predicted, truth) == 0.5


def test_tone_agreement_scores_only_the_truths_axes() -> None:
    truth = Verbalization(tones=[Tone.COOL])
    predicted = Verbalization(tones=[Tone.COOL, Tone.DARK, Tone.MUTED])
    assert tone_agreement(predicted, truth) == 1.0
    assert tone_agreement(Verbalization(), truth) == 0.0
    assert tone_agreement(predicted, Verbalization()) is None


# --- captions ----------------------------------------------------------------------------


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    table = {"one": [2.0, 0.0], "diagonal": [3.0, 3.0], "opposite": [-1.0, 0.0], "void": [0.0, 0.0]}
    return np.array([table[text] for text in texts])


def caption(text: str | None) -> Verbalization:
    return Verbalization(caption=text)


def test_caption_cosine_normalizes_the_embeddings() -> None:
    assert caption_cosine(caption("one"), caption("diagonal"), fake_embed) == pytest.approx(
        1 / math.sqrt(2)
    )
    assert caption_cosine(caption("one"), caption("opposite"), fake_embed) == pytest.approx(-1.0)
    assert caption_cosine(caption("one"), caption("one"), fake_embed) == pytest.approx(1.0)


def test_caption_cosine_edge_cases() -> None:
    assert caption_cosine(caption(None), caption("one"), fake_embed) is None
    assert caption_cosine(caption("one"), caption(None), fake_embed) is None
    assert caption_cosine(caption("one"), caption("void"), fake_embed) == 0.0


@pytest.mark.slow
def test_minilm_puts_similar_captions_closer() -> None:
    embed = MiniLmEmbedder()
    vectors = embed(
        ["a red shoe on a white floor", "a red sneaker on white tiles", "a mountain at night"]
    )
    assert vectors.shape == (3, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    shoe, sneaker, mountain = (
        caption(text)
        for text in (
            "a red shoe on a white floor",
            "a red sneaker on white tiles",
            "a mountain at night",
        )
    )
    near = caption_cosine(shoe, sneaker, embed)
    far = caption_cosine(shoe, mountain, embed)
    assert near is not None and far is not None
    assert near > far + 0.2
    assert embed([]).shape == (0, 384)


# --- behaviour ---------------------------------------------------------------------------


def test_level_accuracy() -> None:
    assert (
        level_accuracy(["low", "high", "medium", "high"], ["low", "medium", "medium", "low"]) == 0.5
    )
    with pytest.raises(ValueError):
        level_accuracy(["low"], ["low", "high"])
    with pytest.raises(ValueError):
        level_accuracy([], [])


def test_spearman_of_monotone_pairs() -> None:
    # Ranks only: any increasing transform of the targets is a perfect correlation.
    assert spearman([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.4, 0.8]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 5.0, 1.0, 0.0]) == pytest.approx(-1.0)


def test_spearman_is_none_where_undefined() -> None:
    assert spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None
    assert spearman([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) is None
    assert spearman([1.0, 2.0], [0.1, 0.2]) is None
    with pytest.raises(ValueError):
        spearman([1.0, 2.0, 3.0], [0.1, 0.2])
