"""BoigLLM retrains on the training worker: a run's stage and step reach its row, its result
is the decision, cancel stops it, and the sweeper queues one per interval when asked to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.db import Database
from services.common.errors import BoigError
from services.trainer.finetune.train import StepReport
from services.trainer.retrain.fold import FoldOutcome
from services.trainer.retrain.job import (
    RETRAIN,
    RetrainJob,
    retrain_plan,
    schedule_retrain,
    scheduled_run_id,
)
from services.trainer.retrain.pipeline import RetrainOutcome
from services.trainer.runs import RunState, TrainingStore
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Sweeper, execute_run


def settings(tmp_path: Path, **overrides: Any) -> TrainerSettings:
    return TrainerSettings(
        database_url=f"sqlite:///{tmp_path / 'runs.db'}",
        dataset_dir=tmp_path / "dataset",
        runs_root=tmp_path / "runs",
        registry=tmp_path / "registry",
        lease_seconds=60,
        **overrides,
    )


def open_store(config: TrainerSettings) -> TrainingStore:
    database = Database(config.database_url)
    database.create_schema()
    return TrainingStore(database)


def skipped(tmp_path: Path) -> RetrainOutcome:
    fold = FoldOutcome(version_dir=tmp_path / "v3", created=False, rows=4, new=0, removed=0)
    return RetrainOutcome("skip", "nothing new", fold, current="v-1")


def test_a_retrain_run_reports_its_stages_and_records_its_outcome(tmp_path: Path) -> None:
    config = settings(tmp_path)
    store = open_store(config)
    run = store.submit(RETRAIN, RetrainJob(force=True).model_dump(mode="json"))
    seen: list[dict[str, Any] | None] = []

    def runner(job: RetrainJob, got: TrainerSettings, **kwargs: Any) -> RetrainOutcome:
        assert job.force and got is config
        assert kwargs["run_id"] == run.id and kwargs["database"] is store.database
        kwargs["on_stage"]("fold")
        seen.append(store.get(run.id).progress)
        for step in range(1, 11):
            kwargs["on_step"](StepReport(step, 10, 1.0 / step, 1e-3))
        seen.append(store.get(run.id).progress)
        return skipped(tmp_path)

    execute_run(store, config, run.id, worker="w", retrain_runner=runner)
    done = store.get(run.id)
    assert done.state is RunState.SUCCEEDED
    assert seen == [{"stage": "fold"}, {"stage": "train", "step": 10, "steps": 10, "loss": 0.1}]
    assert done.result is not None
    assert (done.result["action"], done.result["reason"]) == ("skip", "nothing new")
    assert (done.result["dataset"], done.result["current"]) == ("v3", "v-1")


def test_a_canceled_retrain_stops_at_its_next_report_and_a_failure_is_typed(
    tmp_path: Path,
) -> None:
    config = settings(tmp_path)
    store = open_store(config)
    run = store.submit(RETRAIN, {})

    def cancel_during(job: RetrainJob, got: TrainerSettings, **kwargs: Any) -> RetrainOutcome:
        store.cancel(run.id)
        kwargs["on_stage"]("train")
        raise AssertionError("a canceled retrain must stop at its next report")

    execute_run(store, config, run.id, worker="w", retrain_runner=cancel_during)
    assert store.get(run.id).state is RunState.CANCELED

    broken = store.submit(RETRAIN, {"preset": "huge"})
    execute_run(store, config, broken.id, worker="w", retrain_runner=cancel_during)
    failed = store.get(broken.id)
    assert failed.state is RunState.FAILED and "preset" in (failed.error_message or "")


def test_the_plan_follows_the_settings(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        retrain_trusted_keys=["k1", "k2"],
        retrain_accounts=["acme"],
        retrain_confidence=0.9,
        retrain_eval_posts=50,
        retrain_preset="tiny",
    )
    plan = retrain_plan(config, RetrainJob(max_steps=5))
    assert plan.scope.owners == ("k1", "k2") and plan.scope.accounts == ("acme",)
    assert (plan.policy.confidence, plan.policy.max_posts) == (0.9, 50)
    assert plan.config is not None and plan.config.max_steps == 5
    assert plan.config.base_model == config.llm_base_model
    # No preset: the served checkpoint's own recipe.
    assert retrain_plan(settings(tmp_path), RetrainJob()).config is None
    no_dataset = TrainerSettings(database_url=config.database_url, dataset_dir=None)
    try:
        retrain_plan(no_dataset, RetrainJob())
    except BoigError as exc:
        assert "DATASET_DIR" in exc.message
    else:
        raise AssertionError("a retrain without a dataset must be refused")


def test_the_sweeper_queues_one_retrain_per_interval(
    tmp_path: Path, database: Database, drain_queue: Any
) -> None:
    from services.common.queue import TRAIN_QUEUE, QueueSettings, create_celery_app

    celery = create_celery_app(
        QueueSettings(
            broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
            result_backend=f"db+sqlite:///{tmp_path / 'results.db'}",
        ),
        name="test-retrain-schedule",
    )
    store = TrainingStore(database)
    assert Sweeper(celery, store, settings(tmp_path)).sweep() == []  # off by default

    hourly = settings(tmp_path, retrain_interval_seconds=3600)
    sweeper = Sweeper(celery, store, hourly)
    (queued,) = sweeper.sweep()
    assert queued.startswith("retrain-")
    assert store.get(queued).kind == RETRAIN and store.get(queued).params["scheduled"]
    assert drain_queue(celery, TRAIN_QUEUE) == [queued]
    assert sweeper.sweep() == []  # one is queued already
    # Another worker's scheduler in the same interval names the same run: not queued twice.
    lease = store.claim(queued, worker="w", lease_seconds=60)
    assert lease is not None and store.complete(lease, {"action": "skip"})
    assert schedule_retrain(store, hourly) is None
    assert [run.id for run in store.recent(10)] == [queued]


def test_scheduled_ids_change_with_the_interval_only() -> None:
    assert scheduled_run_id(3600, 7200.0) == scheduled_run_id(3600, 10799.9)
    assert scheduled_run_id(3600, 7200.0) != scheduled_run_id(3600, 10800.0)
    assert len(scheduled_run_id(60, 1e12)) <= 32


def test_the_sweeper_records_registry_changes_for_the_gateway(
    tmp_path: Path, database: Database
) -> None:
    from services.common.checkpoints import (
        KIND_BOIGLLM_LORA,
        BaseModelRef,
        DatasetRef,
        publish_checkpoint,
    )
    from services.common.queue import QueueSettings, create_celery_app
    from services.common.retraining import RetrainLedger

    celery = create_celery_app(
        QueueSettings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"), name="test-rec"
    )
    config = settings(tmp_path)
    sweeper = Sweeper(celery, TrainingStore(database), config)
    ledger = RetrainLedger(database)

    def publish(label: str) -> str:
        source = tmp_path / f"out-{label}"
        source.mkdir()
        (source / "adapter_model.safetensors").write_bytes(label.encode())
        return publish_checkpoint(
            config.registry,
            "boigllm",
            source,
            kind=KIND_BOIGLLM_LORA,
            base_model=BaseModelRef(name="smollm2", version="sha256:1"),
            data=DatasetRef(manifest_sha256="a" * 64, version="v1"),
        ).version

    assert sweeper.record_registry() == ["boigllm", "boigsd"]  # first look: both recorded
    assert sweeper.record_registry() == []  # nothing changed
    first = publish("a")  # e.g. `make train-llm`, outside the worker
    assert sweeper.sweep() == [] and ledger.versions("boigllm").current == first
    assert sweeper.record_registry() == []
    second = publish("b")
    assert sweeper.record_registry() == ["boigllm"]
    assert ledger.versions("boigllm").current == second


def test_a_schedule_without_a_dataset_is_refused_at_start(tmp_path: Path) -> None:
    from pydantic import ValidationError

    try:
        TrainerSettings(dataset_dir=None, retrain_interval_seconds=3600)
    except ValidationError as exc:
        assert "needs dataset_dir" in str(exc)
    else:
        raise AssertionError("a scheduled retrain without a dataset must not start")
