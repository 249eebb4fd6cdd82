"""The promotion rule, apart from the models that feed it (so that the CLI shows decisions
without importing torch): the metrics a retrain measures and when a candidate wins."""

from __future__ import annotations

import math
from typing import Literal

from services.common.contracts import CheckpointEvaluation

HELDOUT_LOSS = "heldout_loss"
"""The decision metric: per post, the mean of the content NLL per token and the level
log-loss (nats); lower is better."""
CONTENT_NLL = "content_nll"
LEVEL_LOGLOSS = "level_logloss"
LEVEL_ACCURACY = "level_accuracy"
LOSSES = (HELDOUT_LOSS, CONTENT_NLL, LEVEL_LOGLOSS)
GUARDED = (CONTENT_NLL, LEVEL_LOGLOSS)
"""Directions the candidate must not be significantly worse on, however much better the
decision metric is: a model that trades one served direction for the other is not better."""


Action = Literal["promote", "reject"]


def decide(evaluation: CheckpointEvaluation, *, min_posts: int) -> tuple[Action, str]:
    """Promote only when the candidate's held-out loss is lower beyond the confidence
    interval (the interval of the paired improvement lies above 0) and neither served
    direction is significantly worse; otherwise reject. Always with the figures why."""
    level = f"{evaluation.confidence:.0%}"
    if evaluation.posts < min_posts:
        return "reject", (
            f"only {evaluation.posts} held-out posts to measure on (the rule needs at least "
            f"{min_posts}): the candidate cannot be shown better"
        )
    primary = evaluation.improvement.get(HELDOUT_LOSS)
    if primary is None:
        return "reject", "the held-out loss could not be measured"
    figures = (
        f"held-out loss {evaluation.current.get(HELDOUT_LOSS, math.nan):.4f} (current) vs "
        f"{evaluation.candidate.get(HELDOUT_LOSS, math.nan):.4f} (candidate), improvement "
        f"{primary.value:+.4f}, {level} CI [{primary.low:+.4f}, {primary.high:+.4f}] over "
        f"{evaluation.posts} posts"
    )
    if primary.low <= 0.0:
        return "reject", f"not better beyond the {level} confidence interval: {figures}"
    worse = [
        f"{metric} {difference.value:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]"
        for metric in GUARDED
        if (difference := evaluation.improvement.get(metric)) is not None and difference.high < 0
    ]
    if worse:
        return "reject", (
            f"better overall ({figures}) but significantly worse on {', '.join(worse)}"
        )
    return "promote", f"better beyond the {level} confidence interval: {figures}"


def describe_evaluation(evaluation: CheckpointEvaluation) -> list[str]:
    """Lines for people: each metric, both checkpoints and the improvement's interval."""
    lines = [
        f"{evaluation.posts} held-out posts from {evaluation.window_start} to "
        f"{evaluation.window_end}; {evaluation.confidence:.0%} paired bootstrap CIs "
        f"({evaluation.resamples} resamples)"
    ]
    for metric in (*LOSSES, LEVEL_ACCURACY):
        current = evaluation.current.get(metric)
        candidate = evaluation.candidate.get(metric)
        difference = evaluation.improvement.get(metric)
        if current is None or candidate is None or difference is None:
            continue
        lines.append(
            f"  {metric:<15} current {current:.4f}  candidate {candidate:.4f}  improvement "
            f"{difference.value:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]"
        )
    return lines
