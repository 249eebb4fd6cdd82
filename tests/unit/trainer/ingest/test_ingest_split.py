"""Splits: temporal per account never trains on the future; random is seeded."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from services.trainer.ingest.rows import PostRow, read_rows
from services.trainer.ingest.split import SplitMode, split_rows


@pytest.fixture
def rows(tmp_path: Path, history, write_rows) -> list[PostRow]:
    records = history({"acme": 10, "globex": 7, "initech": 2, "solo": 1})
    return read_rows(write_rows(records, tmp_path / "data" / "rows.jsonl")).rows


def test_temporal_split_never_trains_on_an_accounts_future(rows: list[PostRow]) -> None:
    split = split_rows(rows, test_fraction=0.3)
    assert split.mode is SplitMode.TEMPORAL
    train_times, test_times = defaultdict(list), defaultdict(list)
    for i in split.train:
        train_times[rows[i].account].append(rows[i].posted_at)
    for i in split.test:
        test_times[rows[i].account].append(rows[i].posted_at)
    for account, times in test_times.items():
        assert min(times) > max(train_times[account]), account
        assert min(times) == split.cut_times[account]
    # Every brand with history has future test rows; a single post stays in training.
    assert set(test_times) == {"acme", "globex", "initech"}
    assert {account: len(times) for account, times in test_times.items()} == {
        "acme": 3,
        "globex": 3,
        "initech": 1,
    }
    assert sorted(split.train + split.test) == list(range(len(rows)))


def test_posts_sharing_the_cut_time_all_go_to_test(rows: list[PostRow]) -> None:
    acme = [row for row in rows if row.account == "acme"]
    latest = max(row.posted_at for row in acme)
    tied = [
        row.model_copy(update={"context": row.context.model_copy(update={"posted_at": latest})})
        if i < 2
        else row
        for i, row in enumerate(acme)
    ]
    split = split_rows(tied, test_fraction=0.1)
    assert len(split.test) == 3  # one asked for, two more at the same instant
    assert {tied[i].posted_at for i in split.test} == {latest}


def test_random_split_is_seeded_and_sized(rows: list[PostRow]) -> None:
    first = split_rows(rows, mode=SplitMode.RANDOM, test_fraction=0.25, seed=7)
    again = split_rows(rows, mode=SplitMode.RANDOM, test_fraction=0.25, seed=7)
    other = split_rows(rows, mode=SplitMode.RANDOM, test_fraction=0.25, seed=8)
    assert first == again
    assert first.test != other.test
    assert len(first.test) == 5
    assert sorted(first.train + first.test) == list(range(len(rows)))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_test_fraction_must_leave_both_sides(rows: list[PostRow], fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_rows(rows, test_fraction=fraction)
