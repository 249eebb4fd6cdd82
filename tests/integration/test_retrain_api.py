"""GET /v1/checkpoints and /v1/retrain/decisions through the gateway app: what the trainer
recorded, for any key, in pages whose cursors are this list's own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.contracts import CheckpointInfo
from services.common.db import Database
from services.common.queue import QueueSettings, create_celery_app
from services.common.retraining import NewDecision, RetrainLedger
from services.gateway.app import create_app
from services.gateway.auth import KeyStore
from services.gateway.cursors import encode_cursor
from services.gateway.feedback import CURSOR_PREFIX as FEEDBACK_CURSOR
from services.gateway.settings import GatewaySettings


class Api:
    def __init__(self, client: TestClient, database: Database) -> None:
        self.client = client
        self.ledger = RetrainLedger(database)
        self.key = KeyStore(database).create("reader").key

    def get(self, url: str, **params: Any) -> Any:
        return self.client.get(url, params=params, headers={"Authorization": f"Bearer {self.key}"})


@pytest.fixture
def api(tmp_path: Path, database: Database) -> Iterator[Api]:
    celery = create_celery_app(
        QueueSettings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"), name="test-api"
    )
    settings = GatewaySettings.model_validate(
        {"database_url": database.url, "artifact_root": tmp_path / "artifacts"}
    )
    with TestClient(create_app(settings, database=database, celery=celery)) as client:
        yield Api(client, database)


def decision(action: str, candidate: str) -> NewDecision:
    return NewDecision(
        checkpoint="boigllm",
        action=action,  # type: ignore[arg-type]
        trigger="retrain" if action != "rollback" else "operator",
        reason=f"{action} {candidate}",
        previous_version="v0",
        current_version=candidate if action == "promote" else "v0",
        candidate_version=candidate,
        details={"owners": ["secret-prefix"]},
    )


def test_the_lists_read_back_what_the_trainer_recorded_without_operator_details(
    api: Api,
) -> None:
    recorded = [
        api.ledger.record(decision(action, f"v{index}")).decision
        for index, action in enumerate(("promote", "reject", "rollback"))
    ]
    first = api.get("/v1/retrain/decisions", limit=2)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [item["id"] for item in page["items"]] == [recorded[2].id, recorded[1].id]
    assert "details" not in page["items"][0] and "secret-prefix" not in first.text
    rest = api.get("/v1/retrain/decisions", limit=2, cursor=page["next_cursor"]).json()
    assert [item["id"] for item in rest["items"]] == [recorded[0].id]
    assert rest["next_cursor"] is None
    # A cursor of another list is not this one's.
    foreign = api.get("/v1/retrain/decisions", cursor=encode_cursor(5, prefix=FEEDBACK_CURSOR))
    assert foreign.status_code == 422 and "cursor" in foreign.json()["error"]["message"]
    one = api.get(f"/v1/retrain/decisions/{recorded[1].id}")
    assert one.status_code == 200 and one.json()["action"] == "reject"
    assert api.get("/v1/retrain/decisions/nope").status_code == 404

    assert api.get("/v1/checkpoints").json() == {
        "name": "boigllm",
        "current": None,
        "items": [],
        "recorded_at": None,
    }
    api.ledger.record_versions(
        "boigsd",
        [
            CheckpointInfo(
                name="boigsd",
                version="20260101T000000Z-0000abcd",
                kind="boigsd-lora",
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                current=True,
                base_model="world-sd@sha256:1",
                dataset_version="v3",
                dataset_sha256="a" * 64,
                metrics={"reward": 0.53},
            )
        ],
    )
    listed = api.get("/v1/checkpoints", name="boigsd").json()
    assert listed["current"] == "20260101T000000Z-0000abcd"
    assert listed["items"][0]["metrics"] == {"reward": 0.53}
    assert listed["recorded_at"] is not None
