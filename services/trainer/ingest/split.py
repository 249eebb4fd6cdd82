"""Train/test split: temporal per account by default (design §6), seeded random on request.

The temporal cut is made *per account*, at a quantile of that account's post times, so every
brand with enough history has future posts in the test set; a single global cut date would
leave brands that stopped posting early with no test rows and brands that started late with
no training rows.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from services.trainer.ingest.rows import PostRow


class SplitMode(StrEnum):
    TEMPORAL = "temporal"
    RANDOM = "random"


@dataclass(frozen=True)
class Split:
    """Row indices (into the kept rows) of each side, in input order."""

    mode: SplitMode
    train: list[int]
    test: list[int]
    cut_times: dict[str, datetime] = field(default_factory=dict)
    """Temporal mode: each account's first test time; its train rows are all strictly earlier."""


def split_rows(
    rows: Sequence[PostRow],
    *,
    mode: SplitMode = SplitMode.TEMPORAL,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be strictly between 0 and 1")
    if mode is SplitMode.RANDOM:
        return random_split(rows, test_fraction=test_fraction, seed=seed)
    return temporal_split(rows, test_fraction=test_fraction)


def temporal_split(rows: Sequence[PostRow], *, test_fraction: float) -> Split:
    """Per account: the latest ``test_fraction`` of posts (at least one) are test rows.

    The cut is a time, not a count: every post at or after the cut time is a test row, so
    posts that share the cut timestamp never straddle the split and no test post is earlier
    than (or as early as) any training post of the same account. An account with a single
    post (or whose posts all share one time) keeps them for training: it has no future.
    """
    by_account: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_account[row.account].append(index)
    test: set[int] = set()
    cut_times: dict[str, datetime] = {}
    for account, indices in by_account.items():
        if len(indices) < 2:
            continue
        times = sorted(rows[i].posted_at for i in indices)
        n_test = min(len(times) - 1, max(1, math.ceil(len(times) * test_fraction)))
        cut = times[len(times) - n_test]
        if cut == times[0]:
            continue  # every post shares one time: there is no future to hold out
        cut_times[account] = cut
        test.update(i for i in indices if rows[i].posted_at >= cut)
    return Split(
        mode=SplitMode.TEMPORAL,
        train=[i for i in range(len(rows)) if i not in test],
        test=sorted(test),
        cut_times=cut_times,
    )


def random_split(rows: Sequence[PostRow], *, test_fraction: float, seed: int) -> Split:
    """A seeded shuffle over all rows; the same seed and rows give the same split."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = round(len(rows) * test_fraction)
    test = set(order[:n_test])
    return Split(
        mode=SplitMode.RANDOM,
        train=[i for i in range(len(rows)) if i not in test],
        test=sorted(test),
    )
