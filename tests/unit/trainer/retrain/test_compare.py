"""The decision rule and what it is computed from: paired intervals with positive meaning
better, the newest held-out posts, and the figures in every reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from services.common.contracts import CheckpointEvaluation, Context, KpiLevel, MetricDifference
from services.trainer.ingest.dataset import FORMAT_VERSION, MANIFEST, Direction, InstructionExample
from services.trainer.retrain.compare import (
    EvaluationPolicy,
    HeldOutPosts,
    PostScores,
    held_out_posts,
    summarize,
)
from services.trainer.retrain.rule import HELDOUT_LOSS, decide

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


def evaluation(
    primary: tuple[float, float, float],
    *,
    posts: int = 40,
    content: tuple[float, float, float] = (0.1, 0.05, 0.15),
    level: tuple[float, float, float] = (0.0, -0.1, 0.1),
) -> CheckpointEvaluation:
    def diff(values: tuple[float, float, float]) -> MetricDifference:
        return MetricDifference(value=values[0], low=values[1], high=values[2])

    return CheckpointEvaluation(
        metric=HELDOUT_LOSS,
        better="lower",
        confidence=0.95,
        resamples=1000,
        posts=posts,
        window_start=DAY0,
        window_end=DAY0 + timedelta(days=30),
        candidate={HELDOUT_LOSS: 1.0},
        current={HELDOUT_LOSS: 1.0 + primary[0]},
        improvement={
            HELDOUT_LOSS: diff(primary),
            "content_nll": diff(content),
            "level_logloss": diff(level),
        },
    )


def test_promote_only_when_the_whole_interval_is_above_zero() -> None:
    action, reason = decide(evaluation((0.2, 0.01, 0.4)), min_posts=20)
    assert action == "promote"
    assert "better beyond the 95% confidence interval" in reason
    assert "[+0.0100, +0.4000]" in reason and "40 posts" in reason
    for interval in ((0.2, 0.0, 0.4), (0.2, -0.01, 0.4), (-0.3, -0.5, -0.1)):
        action, reason = decide(evaluation(interval), min_posts=20)
        assert action == "reject"
        assert reason.startswith("not better beyond the 95% confidence interval")


def test_reject_a_candidate_significantly_worse_in_one_direction() -> None:
    action, reason = decide(
        evaluation((0.2, 0.1, 0.3), content=(0.6, 0.5, 0.7), level=(-0.2, -0.35, -0.05)),
        min_posts=20,
    )
    assert action == "reject"
    assert "significantly worse on level_logloss -0.2000" in reason
    # Worse, but not beyond its interval: promoted.
    action, _ = decide(evaluation((0.2, 0.1, 0.3), level=(-0.2, -0.35, 0.01)), min_posts=20)
    assert action == "promote"


def test_too_few_posts_is_a_rejection_however_good_the_figures() -> None:
    action, reason = decide(evaluation((0.5, 0.4, 0.6), posts=12), min_posts=20)
    assert action == "reject"
    assert "only 12 held-out posts" in reason


def scores(content: list[float], level: list[float], correct: list[bool]) -> PostScores:
    return PostScores(
        content_nll=np.array(content),
        level_logloss=np.array(level),
        level_correct=np.array(correct),
    )


def test_summary_pairs_posts_and_reports_improvements_as_positive_when_better() -> None:
    rng = np.random.default_rng(0)
    n = 60
    current_content = rng.uniform(1.0, 3.0, n)
    current = scores(list(current_content), [1.0] * n, [False] * n)
    # Each post a little better, by much less than the spread between posts: only a paired
    # comparison sees it beyond its interval.
    candidate = scores(
        list(current_content - 0.05), [0.9] * n, [True] * (n // 2) + [False] * (n // 2)
    )
    posts = HeldOutPosts(content=[], behaviour=[], history=None, excluded=0)  # type: ignore[arg-type]
    policy = EvaluationPolicy(resamples=500)
    summary = summarize(candidate, current, posts, policy)
    assert summary.improvement["content_nll"].value == pytest.approx(0.05)
    assert summary.improvement["content_nll"].low == pytest.approx(0.05)  # every post equal
    assert summary.improvement["level_logloss"].value == pytest.approx(0.1)
    assert summary.improvement[HELDOUT_LOSS].value == pytest.approx(0.075)
    assert summary.improvement["level_accuracy"].value == pytest.approx(0.5)
    assert 0 < summary.improvement["level_accuracy"].low < 0.5
    assert summary.current[HELDOUT_LOSS] == pytest.approx(float(current.heldout_loss.mean()))
    assert decide(summary.model_copy(update={"posts": n}), min_posts=20)[0] == "promote"
    # The same figures the other way round: a worse candidate is rejected.
    reverse = summarize(current, candidate, posts, policy)
    assert reverse.improvement[HELDOUT_LOSS].high < 0
    assert decide(reverse.model_copy(update={"posts": n}), min_posts=20)[0] == "reject"


def example(direction: Direction, index: int, day: int, account: str) -> InstructionExample:
    return InstructionExample(
        direction=direction,
        id=f"{account}-{index}",
        context=Context(
            account=account, text=f"post {index}", posted_at=DAY0 + timedelta(days=day)
        ),
        kpi_name="likes",
        level=KpiLevel.HIGH if index % 2 else KpiLevel.LOW,
        percentile=0.5,
        too_few_posts=False,
        verbalization="colors: red (200,20,30) 60%\ntones: warm",
    )


def write_dataset(folder: Path) -> Path:
    """Train: days 0-9; test: days 10-29 of two accounts (ids acme-10.. and zeta-10..)."""
    for split, days in (("train", range(10)), ("test", range(10, 30))):
        for direction in Direction:
            rows = [
                example(direction, day, day, account)
                for account in ("acme", "zeta")
                for day in days
            ]
            path = folder / direction.value / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(row.model_dump_json() + "\n" for row in rows))
    (folder / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION}))
    return folder


def test_held_out_posts_are_the_newest_of_the_test_split(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path)
    posts = held_out_posts(folder, EvaluationPolicy(max_posts=10))
    assert posts.count == 10
    assert [e.id for e in posts.content] == [e.id for e in posts.behaviour]
    days = [(e.context.posted_at - DAY0).days for e in posts.content]  # type: ignore[operator]
    assert days == sorted(days) and min(days) == 25  # the newest five days of both accounts
    assert {e.context.account for e in posts.content} == {"acme", "zeta"}
    assert posts.history.accounts() == {"acme", "zeta"}  # from the training split only

    windowed = held_out_posts(folder, EvaluationPolicy(max_posts=100, window_days=3))
    assert {(e.context.posted_at - DAY0).days for e in windowed.content} == {26, 27, 28, 29}  # type: ignore[operator]

    excluded = held_out_posts(folder, EvaluationPolicy(max_posts=100), exclude={"acme-29", "x"})
    assert excluded.count == 39 and excluded.excluded == 1
    assert "acme-29" not in {e.id for e in excluded.content}
