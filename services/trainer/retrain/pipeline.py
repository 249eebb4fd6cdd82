"""One retrain of BoigLLM, end to end: fold feedback -> train a candidate -> measure it
against the served checkpoint -> promote or reject -> record the decision.

Every stage is reused when its output exists: the fold writes no version when nothing is new,
the candidate's run folder is named by its data and recipe (an interrupted run resumes, a
finished one is published once), and a dataset already decided against the served checkpoint
is not trained again unless forced. One retrain per registry entry runs at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from services.common.checkpoints import (
    BOIGLLM_CHECKPOINT,
    CheckpointManifest,
    CheckpointRef,
    current_checkpoint,
    list_versions,
    load_manifest,
    rollback,
)
from services.common.contracts import CheckpointEvaluation, FeedbackFold
from services.common.errors import InvalidInput, NotFound
from services.common.feedback import FeedbackStore
from services.common.retraining import NewDecision, RetrainLedger, StoredDecision
from services.common.storage import ArtifactStore
from services.trainer.finetune.config import FinetuneConfig
from services.trainer.finetune.publish import base_model_ref, dataset_ref, publish_trained
from services.trainer.finetune.train import TRAIN_STATE, StepReport, finetune
from services.trainer.retrain.compare import EvaluationPolicy, Evaluator, HeldOutEvaluator
from services.trainer.retrain.fold import FeaturizerSource, FoldOutcome, FoldScope, fold_feedback
from services.trainer.retrain.registry import record_registry, retrain_lock
from services.trainer.retrain.rule import decide

logger = logging.getLogger(__name__)

CANDIDATE_FILE = "candidate.json"
"""In a candidate's run folder: the registry version it was published as (published once)."""

Stage = Literal["fold", "train", "evaluate", "decide"]


class Stopped(Exception):
    """The retrain's caller went away (Ctrl-C, SIGTERM): training stops at its next step."""


@dataclass(frozen=True)
class RetrainPlan:
    """What a retrain reads and writes, and by which rules."""

    registry: Path
    dataset: Path
    """The dataset folder (with ``latest``) feedback is folded into and trained on."""
    base_model: Path
    """The base model folder the checkpoints adapt (it must be the current one's)."""
    runs_root: Path
    """Candidates train in ``runs_root/<entry>-retrain-<data>-<recipe>``."""
    name: str = BOIGLLM_CHECKPOINT
    scope: FoldScope = field(default_factory=FoldScope)
    policy: EvaluationPolicy = field(default_factory=EvaluationPolicy)
    config: FinetuneConfig | None = None
    """None: the current checkpoint's own recipe, so the comparison isolates the new data."""
    history_path: Path | None = None
    """The describer's history store, refreshed with the folded posts (None: left alone)."""
    force: bool = False
    """Train and decide even when the data is the current checkpoint's or was decided on."""


@dataclass(frozen=True)
class RetrainOutcome:
    action: Literal["promote", "reject", "skip"]
    reason: str
    fold: FoldOutcome
    decision: StoredDecision | None = None
    """None for a skip: nothing was trained, so nothing was decided."""
    candidate: str | None = None
    current: str | None = None
    """The version served after the retrain."""

    def summary(self) -> dict[str, object]:
        """The training run's result."""
        return {
            "action": self.action,
            "reason": self.reason,
            "decision": self.decision.decision.id if self.decision else None,
            "candidate": self.candidate,
            "current": self.current,
            "dataset": self.fold.version_dir.name,
            "feedback_rows": self.fold.rows,
            "feedback_new": self.fold.new,
        }


def recipe_of(checkpoint: CheckpointRef, base_model: Path) -> FinetuneConfig:
    """The config ``checkpoint`` was trained with, on the local ``base_model`` folder."""
    try:
        state = json.loads((checkpoint.path / TRAIN_STATE).read_text(encoding="utf-8"))
        return FinetuneConfig.model_validate({**state["config"], "base_model": base_model})
    except (OSError, KeyError, ValueError) as exc:
        raise InvalidInput(
            f"{checkpoint.name} {checkpoint.version} records no training config to retrain "
            "with; name a preset"
        ) from exc


def _run_dir(plan: RetrainPlan, data_sha256: str, config: FinetuneConfig) -> Path:
    recipe = hashlib.sha256(config.model_dump_json().encode()).hexdigest()
    return plan.runs_root / f"{plan.name}-retrain-{data_sha256[:12]}-{recipe[:8]}"


def _published_candidate(plan: RetrainPlan, run_dir: Path) -> CheckpointRef | None:
    try:
        version = json.loads((run_dir / CANDIDATE_FILE).read_text(encoding="utf-8"))["version"]
    except (OSError, KeyError, ValueError):
        return None
    return next((r for r in list_versions(plan.registry, plan.name) if r.version == version), None)


async def retrain(
    *,
    plan: RetrainPlan,
    store: FeedbackStore,
    artifacts: ArtifactStore,
    ledger: RetrainLedger,
    featurizer: FeaturizerSource,
    evaluator: Evaluator | None = None,
    run_id: str | None = None,
    on_stage: Callable[[Stage], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> RetrainOutcome:
    """Retrain ``plan.name`` on its dataset with the feedback folded in, and promote the
    candidate only if it is better than the served checkpoint beyond the confidence
    interval (``compare.decide``). ``evaluator`` defaults to the held-out evaluation;
    ``on_stage`` and ``on_step`` report progress (an exception they raise stops the run,
    which a later call resumes)."""
    started = datetime.now(UTC)

    def stage(name: Stage) -> None:
        if on_stage is not None:
            on_stage(name)

    with retrain_lock(plan.registry, plan.name):
        current = current_checkpoint(plan.registry, plan.name)
        if current is None:
            raise NotFound(
                f"no {plan.name} checkpoint is served yet: publish a first one "
                "(`make train-llm`) before retraining it"
            )
        stage("fold")
        fold = await fold_feedback(
            store=store,
            artifacts=artifacts,
            dataset=plan.dataset,
            featurizer=featurizer,
            scope=plan.scope,
            history_path=plan.history_path,
        )
        data = dataset_ref(fold.version_dir)
        served = load_manifest(current, verify=False)

        def skipped(reason: str) -> RetrainOutcome:
            logger.info("retrain of %s skipped: %s", plan.name, reason)
            return RetrainOutcome("skip", reason, fold, current=current.version)

        if not plan.force:
            if data.manifest_sha256 == served.data.manifest_sha256:
                return skipped(
                    f"{current.version} was trained on dataset {data.version} already: no new "
                    "feedback to learn from"
                )
            prior = ledger.evaluated(
                checkpoint=plan.name, dataset_sha256=data.manifest_sha256, against=current.version
            )
            if prior is not None:
                return skipped(
                    f"a candidate trained on dataset {data.version} was measured against "
                    f"{current.version} already ({prior.decision.action}, decision "
                    f"{prior.decision.id}); nothing new since (force to retrain anyway)"
                )

        config = plan.config or recipe_of(current, plan.base_model)
        base = base_model_ref(config.base_model)
        if base != served.base_model:
            raise InvalidInput(
                f"the candidate would adapt {base.name}@{base.version}, the served checkpoint "
                f"{served.base_model.name}@{served.base_model.version}: retrain on the same base"
            )
        run_dir = _run_dir(plan, data.manifest_sha256, config)
        candidate = _published_candidate(plan, run_dir)
        trained_seconds = 0.0
        if candidate is None:
            stage("train")
            began = time.perf_counter()
            # asyncio.run cancels this await on Ctrl-C or a SIGTERM turned into SystemExit,
            # but not the thread: without the flag it trained on to the end (~15 min) while
            # the process waited to exit. The next step raises instead.
            stop = threading.Event()

            def report(step: StepReport) -> None:
                if stop.is_set():
                    raise Stopped(f"stopped at step {step.step}; a later retrain resumes")
                if on_step is not None:
                    on_step(step)

            try:
                result = await asyncio.to_thread(
                    finetune, fold.version_dir, run_dir, config, progress=report
                )
            except asyncio.CancelledError:
                stop.set()
                raise
            trained_seconds = time.perf_counter() - began
            candidate = publish_trained(
                result.out_dir,
                plan.registry,
                dataset_dir=fold.version_dir,
                config=config,
                name=plan.name,
                make_current=False,
            )
            (run_dir / CANDIDATE_FILE).write_text(
                json.dumps({"version": candidate.version}) + "\n", encoding="utf-8"
            )
        record_registry(ledger, plan.registry, plan.name)  # the candidate appears, not current

        stage("evaluate")
        measure = evaluator or HeldOutEvaluator(plan.base_model, plan.policy)
        evaluation = await asyncio.to_thread(
            measure, candidate=candidate, current=current, dataset_dir=fold.version_dir
        )
        stage("decide")
        action, reason = decide(evaluation, min_posts=plan.policy.min_posts)
        decision = _decide_and_move(
            plan,
            ledger,
            action=action,
            reason=reason,
            current=current,
            candidate=candidate,
            evaluation=evaluation,
            fold=fold,
            run_id=run_id,
            details={
                "started_at": started.isoformat(),
                "run_dir": str(run_dir),
                "dataset_dir": str(fold.version_dir),
                "train_seconds": round(trained_seconds, 1),
                "scope": plan.scope.record(),
                "feedback_skipped": [
                    {"feedback_id": s.feedback_id, "reason": s.reason} for s in fold.skipped[:100]
                ],
            },
        )
        record_registry(ledger, plan.registry, plan.name)
        outcome = RetrainOutcome(
            decision.decision.action,  # type: ignore[arg-type]  # promote or reject here
            decision.decision.reason,
            fold,
            decision=decision,
            candidate=candidate.version,
            current=decision.decision.current_version,
        )
        logger.info("retrain of %s: %s: %s", plan.name, outcome.action, outcome.reason)
        return outcome


def _decide_and_move(
    plan: RetrainPlan,
    ledger: RetrainLedger,
    *,
    action: Literal["promote", "reject"],
    reason: str,
    current: CheckpointRef,
    candidate: CheckpointRef,
    evaluation: CheckpointEvaluation,
    fold: FoldOutcome,
    run_id: str | None,
    details: dict[str, object],
) -> StoredDecision:
    """Record the decision, then move the pointer if it promotes: never a move without a
    record. The pointer moves only if it still names the checkpoint measured against (an
    operator may have rolled back meanwhile) and the candidate's files match its manifest."""
    manifest: CheckpointManifest | None = None
    if action == "promote":
        now_current = current_checkpoint(plan.registry, plan.name)
        if now_current is None or now_current.version != current.version:
            action = "reject"
            reason = (
                f"the served checkpoint moved from {current.version} to "
                f"{now_current.version if now_current else None} during the retrain; the "
                f"candidate was measured against the old one ({reason})"
            )
        else:
            manifest = load_manifest(candidate, verify=True)
    if manifest is None:
        manifest = load_manifest(candidate, verify=False)
    decision = ledger.record(
        NewDecision(
            checkpoint=plan.name,
            action=action,
            trigger="retrain",
            reason=reason,
            previous_version=current.version,
            current_version=candidate.version if action == "promote" else current.version,
            candidate_version=candidate.version,
            dataset_version=manifest.data.version,
            dataset_sha256=manifest.data.manifest_sha256,
            evaluation=evaluation,
            feedback=FeedbackFold(
                rows=fold.rows,
                new=fold.new,
                removed=fold.removed,
                skipped=len(fold.skipped),
                trusted_keys=len(plan.scope.owners) if plan.scope.owners is not None else None,
            ),
            run_id=run_id,
            details=details,
        )
    )
    if action == "promote":
        rollback(plan.registry, plan.name, candidate.version)
    return decision
