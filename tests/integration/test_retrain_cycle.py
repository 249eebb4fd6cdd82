"""The feedback -> retrain -> evaluate -> promote/reject cycle on the synthetic world, end to
end on real code: the world's later posts come back as KPI feedback through the gateway, a
retrain folds them into the dataset (real featurizer, no detector), fine-tunes a tiny Llama
(real LoRA training), measures it against the served checkpoint on the newest held-out posts
(real teacher-forced evaluation, paired bootstrap), and promotes or rejects it; every decision
is recorded and read back through the gateway, and a rollback moves the pointer back.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common import prompts
from services.common.checkpoints import (
    BOIGLLM_CHECKPOINT,
    current_checkpoint,
    list_versions,
    load_manifest,
)
from services.common.contracts import KpiTarget
from services.common.db import Database
from services.common.feedback import FeedbackStore
from services.common.queue import QueueSettings, create_celery_app
from services.common.retraining import RetrainLedger
from services.common.storage import LocalArtifactStore
from services.gateway.app import create_app as create_gateway
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings
from services.trainer.finetune.config import FinetuneConfig, tiny_preset
from services.trainer.finetune.data import load_examples
from services.trainer.finetune.publish import publish_trained
from services.trainer.finetune.train import finetune
from services.trainer.ingest.dataset import Direction, read_manifest
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.ingest.pipeline import ingest
from services.trainer.retrain.compare import EvaluationPolicy
from services.trainer.retrain.fold import FoldScope
from services.trainer.retrain.pipeline import RetrainOutcome, RetrainPlan, retrain
from services.trainer.retrain.registry import move_pointer
from services.trainer.world.brands import DEFAULT_BRANDS
from services.trainer.world.generate import POSTS_FILE, generate_world
from tests.featurizer_in_process import featurizer_without_detector

BRANDS = DEFAULT_BRANDS[:2]
POSTS_PER_BRAND = 60
FIRST_POSTS = 40
"""Posts per brand in the history the first checkpoint learns from; the later ones come
back as feedback, in two rounds."""
SECOND_ROUND = 52


@dataclass
class World:
    posts: list[dict[str, Any]]
    """Every post of the world, oldest first (the generator's order)."""
    folder: Path

    def by_brand(self, first: int, last: int) -> list[dict[str, Any]]:
        """The ``first``-th to ``last``-th post (exclusive) of each brand, oldest first."""
        chosen = []
        for brand in BRANDS:
            own = [post for post in self.posts if post["account"] == brand.account]
            chosen.extend(own[first:last])
        return sorted(chosen, key=lambda post: (post["posted_at"], post["id"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    folder = tmp_path_factory.mktemp("world")
    generate_world(
        folder, seed=11, brands=BRANDS, posts_per_brand=POSTS_PER_BRAND, years=2, image_size=64
    )
    lines = (folder / POSTS_FILE).read_text(encoding="utf-8").splitlines()
    return World(posts=[json.loads(line) for line in lines], folder=folder)


@pytest.fixture
async def featurizer() -> AsyncIterator[HttpFeaturizer]:
    """The real featurizer app in process: palettes and tones, no detector to train."""
    async with featurizer_without_detector() as featurizer:
        yield featurizer


@dataclass
class Gateway:
    client: TestClient
    database: Database
    trusted: str
    """The key whose feedback the retrain trusts: its full key."""
    other: str
    """Another key, not trusted."""

    @staticmethod
    def prefix(key: str) -> str:
        return key.split("_")[1]

    def report(self, post: dict[str, Any], world: Path, *, key: str | None = None) -> None:
        """What a marketing app does once a post's likes are counted."""
        image = (world / post["media"]).read_bytes()
        body = {
            "image_base64": base64.b64encode(image).decode(),
            "context": {
                "account": post["account"],
                "text": post["text"],
                "keywords": post["keywords"],
                "posted_at": post["posted_at"],
            },
            "kpi_name": post["kpi_name"],
            "kpi_value": post["kpi_value"],
        }
        response = self.client.post(
            "/v1/feedback", json=body, headers={"Authorization": f"Bearer {key or self.trusted}"}
        )
        assert response.status_code == 201, response.text

    def get(self, url: str, **params: Any) -> Any:
        response = self.client.get(
            url, params=params, headers={"Authorization": f"Bearer {self.trusted}"}
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    database = Database(f"sqlite:///{tmp_path / 'boig.db'}")
    celery = create_celery_app(
        QueueSettings(
            broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
            result_backend=f"db+sqlite:///{tmp_path / 'results.db'}",
        ),
        name="test-retrain",
    )
    settings = GatewaySettings.model_validate(
        {
            "rate_limit": "100000/minute",
            "database_url": database.url,
            "artifact_root": tmp_path / "artifacts",
        }
    )
    with TestClient(create_gateway(settings, database=database, celery=celery)) as client:
        keys = KeyStore(database)
        yield Gateway(client, database, keys.create("app").key, keys.create("stranger").key)
    database.dispose()


def _corpus(dataset: Path) -> Iterable[str]:
    """Text a tokenizer for these prompts must know: both directions of some posts."""
    examples = load_examples(dataset, "train")
    for example in examples[Direction.CONTENT][:40]:
        target = KpiTarget(name=example.kpi_name, level=example.level)
        for message in prompts.describe_messages(example.context, target, few_shot=False):
            yield message["content"]
        yield example.verbalization
        for message in prompts.behaviour_messages(
            example.context, example.kpi_name, example.verbalization
        ):
            yield message["content"]
        yield prompts.level_continuation(example.level)


def _config(base: Path, *, steps: int, **changes: Any) -> FinetuneConfig:
    return tiny_preset(base).model_copy(
        update={"max_steps": steps, "warmup_steps": min(2, steps - 1), **changes}
    )


def _write_posts(posts: list[dict[str, Any]], world: Path, name: str) -> Path:
    path = world / name
    path.write_text("".join(json.dumps(post) + "\n" for post in posts), encoding="utf-8")
    return path


async def test_feedback_retrain_evaluate_promote_reject_rollback(
    world: World,
    featurizer: HttpFeaturizer,
    gateway: Gateway,
    tmp_path: Path,
    build_tiny_llama: Callable[[Iterable[str], int], Path],
    one_torch_thread: None,
) -> None:
    # The history so far: the first posts of each brand, ingested, and a first (barely
    # trained) BoigLLM served from the registry.
    history = _write_posts(world.by_brand(0, FIRST_POSTS), world.folder, "history.jsonl")
    data = tmp_path / "datasets" / "world"
    first = await ingest(history, out=data, featurizer=featurizer, progress=False)
    base = build_tiny_llama(list(_corpus(first.version_dir)), 800)
    registry = tmp_path / "registry"
    served_config = _config(base, steps=2)
    trained = finetune(first.version_dir, tmp_path / "runs" / "first", served_config)
    served = publish_trained(
        trained.out_dir, registry, dataset_dir=first.version_dir, config=served_config
    )

    # What the posts did once posted comes back as feedback: every later post of the first
    # round by the trusted key, one post the history already holds, and a post from a key
    # the retrain does not trust.
    for post in world.by_brand(FIRST_POSTS, SECOND_ROUND):
        gateway.report(post, world.folder)
    gateway.report(world.by_brand(3, 4)[0], world.folder)
    untrusted = world.by_brand(SECOND_ROUND, SECOND_ROUND + 1)[0]
    gateway.report(untrusted, world.folder, key=gateway.other)

    ledger = RetrainLedger(gateway.database)

    def served_version() -> str | None:
        checkpoint = current_checkpoint(registry, BOIGLLM_CHECKPOINT)
        return checkpoint.version if checkpoint is not None else None

    policy = EvaluationPolicy(resamples=500, min_posts=10, max_posts=64, batch_size=16)
    plan = RetrainPlan(
        registry=registry,
        dataset=data,
        base_model=base,
        runs_root=tmp_path / "runs",
        scope=FoldScope(owners=(gateway.prefix(gateway.trusted),)),
        policy=policy,
        # Retrieval prompts and the generative level reading, whose temperature is fitted on
        # validation rows: a tiny model's level word alone is over-confident after 30 steps,
        # which the rule's guard (no direction significantly worse) would rightly refuse.
        config=_config(
            base,
            steps=30,
            learning_rate=1e-2,
            retrieval=True,
            behaviour_scoring="generative",
            max_seq_length=4096,
        ),
        history_path=tmp_path / "history.json",
    )

    async def run(plan: RetrainPlan) -> RetrainOutcome:
        stages: list[str] = []
        outcome = await retrain(
            plan=plan,
            store=FeedbackStore(gateway.database),
            artifacts=LocalArtifactStore(tmp_path / "artifacts"),
            ledger=ledger,
            featurizer=featurizer,
            on_stage=stages.append,
        )
        if outcome.action != "skip":
            assert stages == ["fold", "train", "evaluate", "decide"]
        return outcome

    # 1. A candidate that learned from the new posts beats the barely trained one.
    promoted = await run(plan)
    assert promoted.action == "promote", promoted.reason
    assert promoted.decision is not None and promoted.candidate is not None
    assert served_version() == promoted.candidate
    decision = promoted.decision.decision
    assert (decision.previous_version, decision.current_version) == (
        served.version,
        promoted.candidate,
    )
    evaluation = decision.evaluation
    assert evaluation is not None and evaluation.posts >= policy.min_posts
    assert evaluation.current["heldout_loss"] > evaluation.candidate["heldout_loss"]
    assert evaluation.improvement["heldout_loss"].low > 0
    assert (
        set(evaluation.candidate)
        == set(evaluation.current)
        >= {
            "heldout_loss",
            "content_nll",
            "level_logloss",
            "level_accuracy",
        }
    )
    # Held-out posts are the newest of the new dataset: after everything the first model
    # trained on.
    first_trained = load_examples(first.version_dir, "train")[Direction.CONTENT]
    assert evaluation.window_start is not None
    assert evaluation.window_start > max(e.context.posted_at for e in first_trained)  # type: ignore[type-var]
    # The dataset trained on: the history plus the trusted key's new posts, nothing twice.
    new_dataset = promoted.fold.version_dir
    manifest = read_manifest(new_dataset)
    assert manifest["feedback"]["rows"] == len(world.by_brand(FIRST_POSTS, SECOND_ROUND))
    assert manifest["feedback"]["new"] == manifest["feedback"]["rows"]
    assert manifest["feedback"]["skipped_total"] == 1  # the post the history holds
    assert "holds this creative already" in manifest["feedback"]["skipped"][0]["reason"]
    assert manifest["rows"]["kept"] == len(world.by_brand(0, SECOND_ROUND))
    (stranger,) = FeedbackStore(gateway.database).for_account(
        untrusted["account"], owners=[gateway.prefix(gateway.other)]
    )
    ids = {
        example.id
        for split in ("train", "test")
        for example in load_examples(new_dataset, split)[Direction.CONTENT]
    }
    assert f"feedback-{stranger.id}" not in ids
    assert sum(row_id.startswith("feedback-") for row_id in ids) == manifest["feedback"]["rows"]
    candidate = current_checkpoint(registry, BOIGLLM_CHECKPOINT)
    assert candidate is not None
    assert decision.dataset_sha256 == load_manifest(candidate).data.manifest_sha256
    assert decision.feedback is not None and decision.feedback.trusted_keys == 1

    # 2. Nothing new: the next retrain ends without training or a decision.
    again = await run(plan)
    assert again.action == "skip" and "no new feedback" in again.reason
    assert len(ledger.page(limit=10)[0]) == 1

    # 3. More posts come back; a candidate trained far too briefly is measured, found worse,
    # and rejected: nothing moves.
    for post in world.by_brand(SECOND_ROUND, POSTS_PER_BRAND):
        gateway.report(post, world.folder)
    weak = dataclasses.replace(plan, config=_config(base, steps=2))
    rejected = await run(weak)
    assert rejected.action == "reject", rejected.reason
    assert "not better beyond the 95% confidence interval" in rejected.reason
    assert served_version() == promoted.candidate
    assert rejected.decision is not None
    refused = rejected.decision.decision
    assert refused.evaluation is not None
    assert refused.evaluation.improvement["heldout_loss"].low <= 0
    assert refused.feedback is not None and refused.feedback.new > 0
    assert rejected.fold.version_dir.name != new_dataset.name
    # The same data against the same served checkpoint is not trained again.
    repeat = await run(weak)
    assert repeat.action == "skip" and refused.id in repeat.reason

    # 4. An operator rolls back to the first checkpoint with one command.
    rollback = move_pointer(
        registry=registry,
        name=BOIGLLM_CHECKPOINT,
        version=served.version,
        ledger=ledger,
        action="rollback",
        reason="test: back to the first",
        actor="tests",
    )
    assert served_version() == served.version
    assert rollback.decision.previous_version == promoted.candidate
    assert len(list_versions(registry, BOIGLLM_CHECKPOINT)) == 3

    # Everything is visible through the API.
    listed = gateway.get("/v1/checkpoints")
    assert listed["current"] == served.version
    assert [item["version"] for item in listed["items"]] == [
        rejected.candidate,
        promoted.candidate,
        served.version,
    ]
    decisions = gateway.get("/v1/retrain/decisions")["items"]
    assert [(d["action"], d["trigger"]) for d in decisions] == [
        ("rollback", "operator"),
        ("reject", "retrain"),
        ("promote", "retrain"),
    ]
    assert decisions[2]["evaluation"]["improvement"]["heldout_loss"]["low"] > 0
    assert decisions[2]["dataset_sha256"] == decision.dataset_sha256
    assert gateway.get(f"/v1/retrain/decisions/{decision.id}") == decisions[2]
    rejects = gateway.get("/v1/retrain/decisions", action="reject", limit=1)
    assert [d["id"] for d in rejects["items"]] == [refused.id]
    print(json.dumps(decisions[2], indent=2))  # the example in the closing report
