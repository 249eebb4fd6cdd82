"""One retrain end to end with a deterministic evaluator (what a candidate's figures are is
the evaluator's business, tested on its own): the rule's figures promote or reject, the
pointer moves only after the decision is recorded and only from the checkpoint measured
against, a dataset decided on is not trained again, and a rollback is recorded too."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.common import prompts
from services.common.checkpoints import (
    BOIGLLM_CHECKPOINT,
    CheckpointRef,
    current_checkpoint,
    list_versions,
)
from services.common.contracts import (
    KPI_LEVELS,
    CheckpointEvaluation,
    Context,
    KpiTarget,
    MetricDifference,
)
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.retraining import RetrainLedger
from services.trainer.finetune.config import FinetuneConfig, tiny_preset
from services.trainer.finetune.data import resolve_dataset_dir
from services.trainer.finetune.publish import publish_trained
from services.trainer.finetune.train import StepReport, finetune
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.retrain import pipeline
from services.trainer.retrain.compare import EvaluationPolicy
from services.trainer.retrain.pipeline import RetrainOutcome, RetrainPlan, retrain
from services.trainer.retrain.registry import move_pointer, retrain_lock
from services.trainer.retrain.rule import HELDOUT_LOSS
from tests.unit.trainer.retrain.conftest import ACCOUNTS, Feedback


@pytest.fixture(scope="module")
def base_model(build_tiny_llama: Callable[[Iterable[str], int], Path]) -> Path:
    corpus = []
    for account in ACCOUNTS:
        context = Context(account=account, text=f"{account} post", keywords=["sale"])
        for level in KPI_LEVELS:
            messages = prompts.describe_messages(context, KpiTarget(level=level), few_shot=False)
            corpus += [m["content"] for m in messages]
            corpus.append(prompts.level_continuation(level))
        corpus += [
            m["content"]
            for m in prompts.behaviour_messages(context, "likes", "colors: red (200,30,30) 90%")
        ]
    return build_tiny_llama(corpus * 3, 600)


def tiny(base: Path) -> FinetuneConfig:
    return tiny_preset(base).model_copy(update={"max_steps": 2, "warmup_steps": 1, "eval_every": 0})


def figures(low: float, high: float, *, posts: int = 40) -> CheckpointEvaluation:
    middle = (low + high) / 2
    return CheckpointEvaluation(
        metric=HELDOUT_LOSS,
        better="lower",
        confidence=0.95,
        resamples=1000,
        posts=posts,
        window_start=datetime(2024, 3, 1, tzinfo=UTC),
        window_end=datetime(2024, 3, 9, tzinfo=UTC),
        candidate={HELDOUT_LOSS: 1.0},
        current={HELDOUT_LOSS: 1.0 + middle},
        improvement={HELDOUT_LOSS: MetricDifference(value=middle, low=low, high=high)},
    )


class FixedEvaluator:
    """Answers the figures it is given; records what it was asked and what was served then."""

    def __init__(self, evaluation: CheckpointEvaluation, registry: Path) -> None:
        self.evaluation = evaluation
        self.registry = registry
        self.calls: list[tuple[str, str, str]] = []
        self.during: Callable[[], None] | None = None

    def __call__(
        self, *, candidate: CheckpointRef, current: CheckpointRef, dataset_dir: Path
    ) -> CheckpointEvaluation:
        self.calls.append((candidate.version, current.version, dataset_dir.name))
        served = current_checkpoint(self.registry, BOIGLLM_CHECKPOINT)
        assert served is not None and served.version == current.version  # not yet moved
        if self.during is not None:
            self.during()
        return self.evaluation


class World:
    def __init__(self, tmp_path: Path, dataset: Path, base: Path, feedback: Feedback) -> None:
        self.registry = tmp_path / "registry"
        self.feedback = feedback
        self.ledger = RetrainLedger(feedback.database)
        self.plan = RetrainPlan(
            registry=self.registry,
            dataset=dataset,
            base_model=base,
            runs_root=tmp_path / "runs",
            policy=EvaluationPolicy(min_posts=10),
        )
        first = resolve_dataset_dir(dataset)
        trained = finetune(first, tmp_path / "runs" / "first", tiny(base))
        self.first = publish_trained(
            trained.out_dir, self.registry, dataset_dir=first, config=tiny(base)
        )

    def served(self) -> str | None:
        checkpoint = current_checkpoint(self.registry, BOIGLLM_CHECKPOINT)
        return checkpoint.version if checkpoint is not None else None

    async def retrain(
        self, evaluator: FixedEvaluator, featurizer: HttpFeaturizer, **changes: object
    ) -> RetrainOutcome:
        plan = self.plan
        for key, value in changes.items():
            plan = type(plan)(**{**plan.__dict__, key: value})
        return await retrain(
            plan=plan,
            store=self.feedback.store,
            artifacts=self.feedback.artifacts,
            ledger=self.ledger,
            featurizer=featurizer,
            evaluator=evaluator,
            run_id="run-7",
        )


@pytest.fixture
def world(
    tmp_path: Path,
    dataset: Path,
    base_model: Path,
    feedback: Feedback,
    one_torch_thread: None,
) -> World:
    return World(tmp_path, dataset, base_model, feedback)


async def test_the_rules_figures_promote_and_reject(
    world: World, featurizer: HttpFeaturizer
) -> None:
    for day in range(3):
        world.feedback.record("acme", 40 + day)
    better = FixedEvaluator(figures(0.05, 0.3), world.registry)
    promoted = await world.retrain(better, featurizer)
    assert promoted.action == "promote", promoted.reason
    assert world.served() == promoted.candidate != world.first.version
    assert better.calls == [(promoted.candidate, world.first.version, "v2")]
    stored = world.ledger.get(promoted.decision.decision.id)  # type: ignore[union-attr]
    assert stored.decision.run_id == "run-7"
    assert stored.decision.evaluation == figures(0.05, 0.3)
    assert stored.details["dataset_dir"].endswith("v2")  # type: ignore[union-attr]
    listed = world.ledger.versions(BOIGLLM_CHECKPOINT)
    assert listed.current == promoted.candidate and len(listed.items) == 2

    world.feedback.record("zeta", 50)
    unsure = FixedEvaluator(figures(-0.01, 0.3), world.registry)
    rejected = await world.retrain(unsure, featurizer)
    assert rejected.action == "reject"
    assert "not better beyond the 95% confidence interval" in rejected.reason
    assert world.served() == promoted.candidate
    assert len(list_versions(world.registry, BOIGLLM_CHECKPOINT)) == 3  # kept, not served
    decision = rejected.decision.decision  # type: ignore[union-attr]
    assert (decision.previous_version, decision.current_version) == (
        promoted.candidate,
        promoted.candidate,
    )
    assert world.ledger.versions(BOIGLLM_CHECKPOINT).current == promoted.candidate

    # Decided once: the same data against the same served checkpoint is not trained again.
    again = await world.retrain(FixedEvaluator(figures(0.1, 0.2), world.registry), featurizer)
    assert again.action == "skip" and decision.id in again.reason
    # Forced, it is, and the figures decide again (the candidate is reused, not retrained).
    forced = await world.retrain(
        FixedEvaluator(figures(0.1, 0.2), world.registry), featurizer, force=True
    )
    assert forced.action == "promote" and forced.candidate == rejected.candidate

    rollback = move_pointer(
        registry=world.registry,
        name=BOIGLLM_CHECKPOINT,
        version=promoted.candidate,  # type: ignore[arg-type]
        ledger=world.ledger,
        action="rollback",
        reason="the forced one misbehaves",
        actor="tests",
    )
    assert world.served() == promoted.candidate
    assert rollback.decision.previous_version == rejected.candidate
    assert rollback.details == {"actor": "tests"}
    with pytest.raises(InvalidInput, match="promotion, not a rollback"):
        move_pointer(
            registry=world.registry,
            name=BOIGLLM_CHECKPOINT,
            version=rejected.candidate,  # type: ignore[arg-type]
            ledger=world.ledger,
            action="rollback",
            reason="",
            actor="tests",
        )
    with pytest.raises(Conflict):
        move_pointer(
            registry=world.registry,
            name=BOIGLLM_CHECKPOINT,
            version=promoted.candidate,  # type: ignore[arg-type]
            ledger=world.ledger,
            action="promote",
            reason="",
            actor="tests",
        )
    actions = [item.decision.action for item in world.ledger.page(limit=10)[0]]
    assert actions == ["rollback", "promote", "reject", "promote"]


async def test_a_pointer_moved_during_the_evaluation_is_left_where_the_operator_put_it(
    world: World, featurizer: HttpFeaturizer
) -> None:
    world.feedback.record("acme", 40)
    other = publish_trained(
        world.plan.runs_root / "first",
        world.registry,
        dataset_dir=resolve_dataset_dir(world.plan.dataset),
        config=tiny(world.plan.base_model),
        make_current=False,
    )
    better = FixedEvaluator(figures(0.1, 0.3), world.registry)

    def operator_moves() -> None:
        move_pointer(
            registry=world.registry,
            name=BOIGLLM_CHECKPOINT,
            version=other.version,
            ledger=world.ledger,
            action="promote",
            reason="by hand",
            actor="ops",
        )

    better.during = operator_moves
    outcome = await world.retrain(better, featurizer)
    assert outcome.action == "reject"
    assert f"moved from {world.first.version} to {other.version}" in outcome.reason
    assert world.served() == other.version


async def test_too_few_held_out_posts_is_a_recorded_rejection(
    world: World, featurizer: HttpFeaturizer
) -> None:
    world.feedback.record("acme", 40)
    outcome = await world.retrain(
        FixedEvaluator(figures(0.2, 0.4, posts=4), world.registry), featurizer
    )
    assert outcome.action == "reject" and "only 4 held-out posts" in outcome.reason
    assert world.served() == world.first.version


async def test_what_a_retrain_refuses(
    world: World, featurizer: HttpFeaturizer, tmp_path: Path
) -> None:
    never = FixedEvaluator(figures(0.1, 0.2), world.registry)
    # Nothing new: no training, no decision.
    quiet = await world.retrain(never, featurizer)
    assert quiet.action == "skip" and "no new feedback" in quiet.reason
    assert never.calls == [] and world.ledger.page(limit=5)[0] == []

    world.feedback.record("acme", 40)
    # Another base model than the served checkpoint adapts.
    other_base = tmp_path / "other-base"
    shutil.copytree(world.plan.base_model, other_base)
    config = json.loads((other_base / "config.json").read_text())
    (other_base / "config.json").write_text(json.dumps({**config, "rope_theta": 12345.0}))
    with pytest.raises(InvalidInput, match="retrain on the same base"):
        await world.retrain(never, featurizer, base_model=other_base)
    # Another retrain of the same entry holds the lock.
    with retrain_lock(world.registry, BOIGLLM_CHECKPOINT), pytest.raises(Conflict):
        await world.retrain(never, featurizer)
    # Nothing served yet: nothing to retrain against.
    with pytest.raises(NotFound, match="make train-llm"):
        await world.retrain(never, featurizer, registry=tmp_path / "empty-registry")
    assert never.calls == []


async def test_a_cancelled_retrain_stops_training_at_the_next_step(
    world: World, featurizer: HttpFeaturizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C or SIGTERM cancels the awaiting task; the training thread must stop too, or the
    # process waits for it to train to the end before it can exit.
    world.feedback.record("acme", 40)
    steps: list[int] = []
    training = threading.Event()
    ended: list[BaseException] = []
    done = threading.Event()

    def long(dataset: Path, out: Path, config: FinetuneConfig, *, progress: Any) -> Any:
        try:
            for step in range(1, 3001):  # ~30 s: long enough, and ends even if never stopped
                steps.append(step)
                training.set()
                progress(StepReport(step, 3000, 1.0, 1e-4))
                time.sleep(0.01)
        except BaseException as exc:
            ended.append(exc)
            raise
        finally:
            done.set()

    monkeypatch.setattr(pipeline, "finetune", long)
    task = asyncio.create_task(
        world.retrain(FixedEvaluator(figures(0.1, 0.2), world.registry), featurizer)
    )
    await asyncio.to_thread(training.wait, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(done.wait, 60)
    assert ended and isinstance(ended[0], pipeline.Stopped), ended
    stopped_at = len(steps)
    await asyncio.sleep(0.1)
    assert len(steps) == stopped_at  # no step after the stop
