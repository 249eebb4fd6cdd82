"""The baselines BoigLLM must beat, each built from the training split only.

- NearestPastImage: the brand's most similar past post at the target KPI level (similarity of
  post text and keywords in MiniLM space); its real image's description is the prediction.
  For a ``high`` target that is the paper's retrieval baseline, "the brand's most similar past
  high-KPI image"; at other levels it answers with the same kind of evidence.
- BrandAveragePalette: the brand's typical colours (coverage-weighted k-means over every colour
  of its past images) and its most common tone on each axis; no objects. Its ``by_level``
  variant averages only the past posts at the target level.

The base model, zero/few-shot, is the describer serving no checkpoint (see run.py).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from services.common.contracts import TONE_AXIS, ColorSwatch, KpiLevel, Tone, Verbalization
from services.common.verbalization import parse
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

    def predict(self, queries: Sequence[InstructionExample]) -> list[Verbalization]:
        vectors = self._embed([post_text(query) for query in queries]) if queries else None
        predictions = []
        for index, query in enumerate(queries):
            key = (query.context.account, query.level)
            pool = self._pool.get(key)
            if not pool or vectors is None:
                predictions.append(Verbalization())  # no past post of that brand and level
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

    def predict(self, queries: Sequence[InstructionExample]) -> list[Verbalization]:
        return [self._average.get(self._key(q), Verbalization()) for q in queries]


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
