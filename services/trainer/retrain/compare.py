"""The candidate against the served checkpoint on the most recent held-out posts, paired.

Both models read the same posts: the newest of the dataset's test split (a temporal split, so
these are the latest of each account's posts), none in the candidate's training split by
construction and none in the current checkpoint's (its dataset's training posts are left out
when they moved into the test period). Each is prompted as it is served (its own prompt style,
retrieval lines from the training split's history, its own reading of levels).

The measure is held-out log-loss, a proper scoring rule of both directions BoigLLM serves,
read by teacher forcing (no sampling: deterministic and ~100x cheaper than decoding):

- content: the mean negative log-likelihood per token of the post's real description given
  its context and its real KPI level;
- behaviour: -log P(real level | context, description), the level distribution as served
  (the level word, or Bayes through the content direction with the fitted temperature).

A post's loss is the mean of the two; the decision metric is the mean over posts. Differences
are paired per post and their mean gets a percentile bootstrap interval (posts resampled).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.common.checkpoints import CheckpointRef
from services.common.contracts import (
    KPI_LEVELS,
    CheckpointEvaluation,
    KpiLevel,
    MetricDifference,
)
from services.common.history import HistoryStore
from services.common.serving_profile import ServingProfile
from services.trainer.evaluate.bootstrap import bootstrap_mean
from services.trainer.finetune.data import load_examples, resolve_dataset_dir, to_prompt_target
from services.trainer.finetune.train import TRAIN_STATE
from services.trainer.ingest.dataset import Direction, InstructionExample, history_of
from services.trainer.retrain.rule import (
    HELDOUT_LOSS,
    LEVEL_ACCURACY,
    LOSSES,
)

logger = logging.getLogger(__name__)

MIN_LEVEL_PROBABILITY = 1e-12


@dataclass(frozen=True)
class EvaluationPolicy:
    """How the candidate is measured and when it wins; see TrainerSettings' retrain_* fields."""

    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    max_posts: int = 256
    min_posts: int = 20
    window_days: float | None = None
    batch_size: int = 8
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.resamples < 1 or self.max_posts < 1 or self.min_posts < 1:
            raise ValueError("resamples, max_posts and min_posts must be at least 1")
        if self.window_days is not None and self.window_days <= 0:
            raise ValueError("window_days must be positive")


class Evaluator(Protocol):
    """Measures a candidate against the current checkpoint on a dataset's held-out posts."""

    def __call__(
        self, *, candidate: CheckpointRef, current: CheckpointRef, dataset_dir: Path
    ) -> CheckpointEvaluation: ...


@dataclass(frozen=True)
class HeldOutPosts:
    """The posts both checkpoints are measured on, oldest first, both directions aligned."""

    content: list[InstructionExample]
    behaviour: list[InstructionExample]
    history: HistoryStore
    """The training split's history: what retrieval prompts read (no held-out post in it)."""
    excluded: int
    """Test posts left out because the current checkpoint was trained on them."""

    @property
    def count(self) -> int:
        return len(self.content)


def held_out_posts(
    dataset_dir: Path, policy: EvaluationPolicy, *, exclude: Collection[str] = ()
) -> HeldOutPosts:
    """The newest ``policy.max_posts`` posts of the test split (within ``window_days`` of
    the newest, when set), without ``exclude``."""
    train = load_examples(dataset_dir, "train")
    test = load_examples(dataset_dir, "test")
    behaviour = {example.id: example for example in test[Direction.BEHAVIOUR]}
    candidates = [e for e in test[Direction.CONTENT] if e.id in behaviour]
    kept = [e for e in candidates if e.id not in exclude]
    kept.sort(key=lambda e: (_posted(e), e.id), reverse=True)
    if policy.window_days is not None and kept:
        start = _posted(kept[0]) - timedelta(days=policy.window_days)
        kept = [e for e in kept if _posted(e) >= start]
    chosen = sorted(kept[: policy.max_posts], key=lambda e: (_posted(e), e.id))
    return HeldOutPosts(
        content=chosen,
        behaviour=[behaviour[e.id] for e in chosen],
        history=history_of(train[Direction.CONTENT]),
        excluded=len(candidates) - len(kept),
    )


def _posted(example: InstructionExample) -> Any:
    assert example.context.posted_at is not None  # ingest refuses rows without one
    return example.context.posted_at


def trained_post_ids(checkpoint: CheckpointRef) -> set[str] | None:
    """The posts of the training split ``checkpoint`` was trained on, from the dataset its
    train_state names; None when that dataset is no longer readable."""
    try:
        state = json.loads((checkpoint.path / TRAIN_STATE).read_text(encoding="utf-8"))
        folder = resolve_dataset_dir(Path(state["dataset"]))
        examples = load_examples(folder, "train")
    except (OSError, KeyError, ValueError):
        return None
    return {example.id for items in examples.values() for example in items}


@dataclass(frozen=True)
class PostScores:
    """One checkpoint's per-post figures, aligned with ``HeldOutPosts``."""

    content_nll: np.ndarray
    level_logloss: np.ndarray
    level_correct: np.ndarray

    @property
    def heldout_loss(self) -> np.ndarray:
        result: np.ndarray = 0.5 * (self.content_nll + self.level_logloss)
        return result

    def per_post(self, metric: str) -> np.ndarray:
        if metric == LEVEL_ACCURACY:
            return self.level_correct.astype(np.float64)
        if metric == HELDOUT_LOSS:
            return self.heldout_loss
        values: np.ndarray = getattr(self, metric)
        return values

    def means(self) -> dict[str, float]:
        return {
            metric: float(self.per_post(metric).mean())
            for metric in (*LOSSES, LEVEL_ACCURACY)
            if len(self.content_nll)
        }


def score_checkpoint(
    checkpoint: CheckpointRef,
    posts: HeldOutPosts,
    *,
    base_model: Path,
    batch_size: int = 8,
    device: str = "auto",
) -> PostScores:
    """``checkpoint`` on ``posts``, prompted and read as the describer serves it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.common.torch_device import resolve_device
    from services.trainer.finetune.probe import (
        Probe,
        continuation_logprobs,
        generative_posterior,
    )

    profile = ServingProfile.read(checkpoint.path)
    few_shot = _trained_few_shot(checkpoint)
    history = posts.history if profile.retrieval else None
    tokenizer: Any = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(
        str(base_model), local_files_only=True, dtype=torch.float32
    )
    model: Any = PeftModel.from_pretrained(base, str(checkpoint.path), is_trainable=False)
    model.to(resolve_device(device)).eval()
    with torch.no_grad():
        pairs = []
        for example in posts.content:
            pair = to_prompt_target(example, tokenizer, few_shot=few_shot, history=history)
            pairs.append((pair.prompt, pair.target))
        content = continuation_logprobs(model, tokenizer, pairs, batch_size)
        content_nll = np.array([-total / max(1, count) for total, count in content])
        probe = Probe(
            content=[],
            behaviour=posts.behaviour,
            train=[],
            history=history,
            leave_out=False,
            few_shot=few_shot,
            batch_size=batch_size,
        )
        if profile.behaviour == "generative" and history is not None:
            log_posterior = generative_posterior(
                probe.generative_loglikelihoods(model, tokenizer),
                probe.level_priors(),
                profile.temperature,
            )
        else:
            log_posterior = probe.discriminative_logprobs(model, tokenizer)
    truth = np.array([KPI_LEVELS.index(KpiLevel(e.level)) for e in posts.behaviour])
    rows = np.arange(len(truth))
    true_logprob = log_posterior[rows, truth] if len(truth) else np.zeros(0, dtype=np.float64)
    level_logloss = -np.maximum(true_logprob, math.log(MIN_LEVEL_PROBABILITY))
    correct = log_posterior.argmax(axis=1) == truth if len(truth) else np.zeros(0, dtype=bool)
    return PostScores(content_nll=content_nll, level_logloss=level_logloss, level_correct=correct)


def _trained_few_shot(checkpoint: CheckpointRef) -> bool:
    try:
        state = json.loads((checkpoint.path / TRAIN_STATE).read_text(encoding="utf-8"))
        return bool(state["config"]["few_shot_prompt"])
    except (OSError, KeyError, TypeError, ValueError):
        return False


def summarize(
    candidate: PostScores,
    current: PostScores,
    posts: HeldOutPosts,
    policy: EvaluationPolicy,
) -> CheckpointEvaluation:
    """Both checkpoints' means and the candidate's improvement on each metric, with paired
    bootstrap intervals (one resampling of posts shared by every metric: same seed)."""
    improvement: dict[str, MetricDifference] = {}
    for metric in (*LOSSES, LEVEL_ACCURACY):
        sign = -1.0 if metric == LEVEL_ACCURACY else 1.0
        differences = sign * (current.per_post(metric) - candidate.per_post(metric))
        estimate = bootstrap_mean(
            [float(d) for d in differences],
            confidence=policy.confidence,
            resamples=policy.resamples,
            seed=policy.seed,
        )
        if estimate is not None:
            improvement[metric] = MetricDifference(
                value=estimate.value, low=estimate.low, high=estimate.high
            )
    return CheckpointEvaluation(
        metric=HELDOUT_LOSS,
        better="lower",
        confidence=policy.confidence,
        resamples=policy.resamples,
        posts=posts.count,
        window_start=_posted(posts.content[0]) if posts.content else None,
        window_end=_posted(posts.content[-1]) if posts.content else None,
        candidate=candidate.means(),
        current=current.means(),
        improvement=improvement,
    )


@dataclass(frozen=True)
class HeldOutEvaluator:
    """The evaluator a retrain uses: both checkpoints on the newest held-out posts."""

    base_model: Path
    policy: EvaluationPolicy

    def __call__(
        self, *, candidate: CheckpointRef, current: CheckpointRef, dataset_dir: Path
    ) -> CheckpointEvaluation:
        trained = trained_post_ids(current)
        if trained is None:
            logger.warning(
                "the dataset %s was trained on is not readable: its training posts cannot be "
                "told apart from the held-out ones (the comparison may favour it)",
                current.version,
            )
        posts = held_out_posts(dataset_dir, self.policy, exclude=trained or ())
        if posts.excluded:
            logger.info("left out %d test posts %s was trained on", posts.excluded, current.version)
        scores = []
        for role, checkpoint in (("candidate", candidate), ("current", current)):
            # Minutes on a CPU (each post's description, and under the generative reading its
            # likelihood at every level): say what runs, so a quiet terminal is not a hang.
            logger.info(
                "evaluate: %s %s on the %d newest held-out posts (%s to %s)",
                role,
                checkpoint.version,
                posts.count,
                _posted(posts.content[0]) if posts.content else "-",
                _posted(posts.content[-1]) if posts.content else "-",
            )
            started = time.perf_counter()
            scored = score_checkpoint(
                checkpoint,
                posts,
                base_model=self.base_model,
                batch_size=self.policy.batch_size,
                device=self.policy.device,
            )
            means = scored.means()
            logger.info(
                "evaluate: %s held-out loss %.4f, level accuracy %.3f (%.0f s)",
                role,
                means.get(HELDOUT_LOSS, float("nan")),
                means.get(LEVEL_ACCURACY, float("nan")),
                time.perf_counter() - started,
            )
            scores.append(scored)
        return summarize(scores[0], scores[1], posts, self.policy)
