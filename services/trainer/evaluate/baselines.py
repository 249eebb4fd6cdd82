"""The baselines BoigLLM must beat, each built from the training split only.

Description baselines (a description per content row; None where they have no evidence for
the row, which is scored as a failure):

- NearestPastImage: the brand's most similar past post at the target KPI level (similarity of
  post text and keywords in MiniLM space); its real image's description is the prediction.
  For a ``high`` target that is the paper's retrieval baseline, "the brand's most similar past
  high-KPI image"; at other levels it answers with the same kind of evidence.
- BrandAveragePalette: the brand's typical colours (coverage-weighted k-means over every colour
  of its past images) and its most common tone on each axis; no objects. Its ``by_level``
  variant averages only the past posts at the target level.

Behaviour baselines (a level and a normalized-KPI score per behaviour row):

- MajorityLevel: the training split's most frequent level for every row; its score is
  constant, so its Spearman is undefined (None), honestly.
- BrandLevelPrior: the account's level frequencies in training (Laplace-smoothed; global
  frequencies for an unseen account); level = the most frequent, score = the expected
  normalized KPI under those frequencies, so Spearman ranks accounts against each other.

The base model, zero/few-shot, is the describer serving no checkpoint (see run.py).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from services.common.contracts import (
    KPI_LEVELS,
    TONE_AXIS,
    ColorSwatch,
    KpiLevel,
    Tone,
    Verbalization,
)
from services.common.verbalization import parse
from services.trainer.evaluate.metrics import Prediction
from services.trainer.evaluate.results import LevelPredictions
from services.trainer.ingest.dataset import InstructionExample

Embed = Callable[[list[str]], NDArray[np.floating]]
"""Texts -> L2-normalized embeddings, one row per text."""


def post_text(example: InstructionExample) -> str:
    """What a retrieval system knows of a post before its image exists: text and keywords."""
    keywords = ", ".join(example.context.keywords)
    return f"{example.context.text}\n{keywords}" if keywords else example.context.text


class NearestPastImage:
    """Retrieval: per (account, level), the past post whose text is closest to the query's."""

    name = "nearest past image"

    def __init__(self, train: Sequence[InstructionExample], embed: Embed) -> None:
        self._embed = embed
        by_key: dict[tuple[str, KpiLevel], list[InstructionExample]] = defaultdict(list)
        for example in train:
            by_key[example.context.account, example.level].append(example)
        for pool in by_key.values():  # oldest first: the tie-break below relies on it
            pool.sort(key=lambda e: (e.context.posted_at is None, e.context.posted_at, e.id))
        self._pool = dict(by_key)
        self._vectors = {key: embed([post_text(e) for e in pool]) for key, pool in by_key.items()}

    def predict(self, queries: Sequence[InstructionExample]) -> list[Prediction]:
        """The nearest past post's description per query; None where the brand has no past
        post at that level: retrieval has nothing to show, which is a failure to answer, not
        a claim that the image is empty."""
        vectors = self._embed([post_text(query) for query in queries]) if queries else None
        predictions: list[Prediction] = []
        for index, query in enumerate(queries):
            key = (query.context.account, query.level)
            pool = self._pool.get(key)
            if not pool or vectors is None:
                predictions.append(None)
                continue
            similarity = self._vectors[key] @ vectors[index]
            # Ties (templated texts embed identically) go to the most recent post: the closest
            # evidence in time of what the brand posts now.
            best = max(range(len(pool)), key=lambda i: (round(float(similarity[i]), 6), i))
            predictions.append(parse(pool[best].verbalization))
        return predictions


class BrandAveragePalette:
    """The brand's average look: k-means colours weighted by coverage, majority tones. With
    ``by_level``, the average of its past posts at the target level only: the most a point
    prediction gains from knowing the level, a reference for what a model could learn."""

    def __init__(
        self, train: Sequence[InstructionExample], *, by_level: bool = False, seed: int = 0
    ) -> None:
        self.name = "brand average at level" if by_level else "brand average palette"
        self._by_level = by_level
        groups: dict[tuple[str, KpiLevel | None], list[Verbalization]] = defaultdict(list)
        for example in train:
            groups[self._key(example)].append(parse(example.verbalization))
        self._average = {key: average_look(looks, seed=seed) for key, looks in groups.items()}

    def _key(self, example: InstructionExample) -> tuple[str, KpiLevel | None]:
        return example.context.account, example.level if self._by_level else None

    def predict(self, queries: Sequence[InstructionExample]) -> list[Prediction]:
        """The average look per query; None for a brand (or brand and level) without past
        posts, scored as a failure like retrieval's."""
        return [self._average.get(self._key(q)) for q in queries]


def average_look(looks: Sequence[Verbalization], *, seed: int = 0) -> Verbalization:
    """Colours: k-means (k = the median palette size) over every swatch, weighted by its
    coverage; each cluster's coverage is its share of the weight times the mean total
    coverage of a palette, and its name that of the swatch nearest its centre. Tones: the
    most common word on each axis that at least half of the images have a word for."""
    from sklearn.cluster import KMeans

    swatches = [color for look in looks for color in look.colors]
    colors: list[ColorSwatch] = []
    if swatches:
        rgb = np.array([color.rgb for color in swatches], dtype=np.float64)
        weight = np.array([max(color.coverage, 1e-3) for color in swatches])
        sizes = [len(look.colors) for look in looks if look.colors]
        k = max(1, min(int(np.median(sizes)), len(np.unique(rgb, axis=0))))
        kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(rgb, sample_weight=weight)
        mean_total = float(np.mean([sum(c.coverage for c in look.colors) for look in looks]))
        shares = np.bincount(kmeans.labels_, weights=weight, minlength=k) / weight.sum()
        for cluster in np.argsort(-shares):
            centre = np.clip(np.rint(kmeans.cluster_centers_[cluster]), 0, 255)
            nearest = swatches[int(np.argmin(np.linalg.norm(rgb - centre, axis=1)))]
            colors.append(
                ColorSwatch(
                    name=nearest.name,
                    rgb=(int(centre[0]), int(centre[1]), int(centre[2])),
                    coverage=float(shares[cluster]) * mean_total,
                )
            )
    return Verbalization(colors=colors, tones=_majority_tones(looks))


def _majority_tones(looks: Sequence[Verbalization]) -> list[Tone]:
    by_axis: dict[str, Counter[Tone]] = defaultdict(Counter)
    for look in looks:
        for tone in look.tones:
            by_axis[TONE_AXIS[tone]][tone] += 1
    return [
        counts.most_common(1)[0][0]
        for counts in by_axis.values()
        if sum(counts.values()) * 2 >= len(looks)
    ]


# --- behaviour baselines ------------------------------------------------------------------


def _require_rows(train: Sequence[InstructionExample], name: str) -> Sequence[InstructionExample]:
    if not train:
        raise ValueError(f"{name} needs at least one training row")
    return train


def mean_percentile_by_level(train: Sequence[InstructionExample]) -> dict[KpiLevel, float]:
    """The mean normalized KPI of the training rows at each level, for the levels that occur:
    what a level stands for on the percentile scale, measured rather than assumed from the
    bucket cut points."""
    by_level: dict[KpiLevel, list[float]] = defaultdict(list)
    for example in train:
        by_level[example.level].append(example.percentile)
    return {level: float(np.mean(by_level[level])) for level in KPI_LEVELS if level in by_level}


def _frequencies(
    counts: Counter[KpiLevel], support: Sequence[KpiLevel], smoothing: float
) -> dict[KpiLevel, float]:
    total = sum(counts[level] for level in support) + smoothing * len(support)
    return {level: (counts[level] + smoothing) / total for level in support}


class MajorityLevel:
    """The most frequent level of the training split for every row: the accuracy any method
    gets for free from the level imbalance (with the default cut points, "low" is 60%)."""

    name = "majority class"

    def __init__(self, train: Sequence[InstructionExample]) -> None:
        rows = _require_rows(train, self.name)
        counts = Counter(example.level for example in rows)
        # Exact ties go to the first level in KPI_LEVELS order, so the choice is reproducible.
        self.level = max(KPI_LEVELS, key=counts.__getitem__)
        # The training split's mean normalized KPI: the best constant score. Any constant
        # leaves Spearman undefined, which is the honest answer for this baseline.
        self.score = float(np.mean([example.percentile for example in rows]))

    def predict(self, queries: Sequence[InstructionExample]) -> LevelPredictions:
        return LevelPredictions(
            levels=[self.level] * len(queries), scores=[self.score] * len(queries)
        )


class BrandLevelPrior:
    """What knowing only the brand says about a post's level: the account's level frequencies
    in training, Laplace-smoothed (``smoothing`` pseudo-posts per level) so that a brand
    with few posts does not rule a level out; the global frequencies for an unseen account.

    Levels that never occur in training are left out: nothing says what KPI they stand for.
    """

    name = "brand level prior"

    def __init__(self, train: Sequence[InstructionExample], *, smoothing: float = 1.0) -> None:
        rows = _require_rows(train, self.name)
        if smoothing < 0:
            raise ValueError(f"smoothing must be non-negative, got {smoothing}")
        self._means = mean_percentile_by_level(rows)
        support = tuple(self._means)
        self._global = _frequencies(Counter(e.level for e in rows), support, smoothing=0.0)
        by_account: dict[str, Counter[KpiLevel]] = defaultdict(Counter)
        for example in rows:
            by_account[example.context.account][example.level] += 1
        self._by_account = {
            account: _frequencies(counts, support, smoothing)
            for account, counts in by_account.items()
        }

    def frequencies(self, account: str) -> dict[KpiLevel, float]:
        """The account's smoothed level frequencies, or the global ones if it is unseen."""
        return self._by_account.get(account, self._global)

    def predict(self, queries: Sequence[InstructionExample]) -> LevelPredictions:
        levels: list[KpiLevel] = []
        scores: list[float] = []
        for query in queries:
            frequencies = self.frequencies(query.context.account)
            # Ties go to the globally more frequent level, then to KPI_LEVELS order.
            levels.append(
                max(frequencies, key=lambda level: (frequencies[level], self._global[level]))
            )
            scores.append(sum(p * self._means[level] for level, p in frequencies.items()))
        return LevelPredictions(levels=levels, scores=scores)
