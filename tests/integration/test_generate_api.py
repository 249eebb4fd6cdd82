"""POST /v1/generate and the job routes, with no worker running: what the gateway itself owes.

The queue is the embedded SQLite broker in tmp_path; a test reads it back to check that a job's
task was really sent. Jobs run in tests/reliability, against real workers.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from PIL import Image

from services.common.db import Database
from services.common.jobs import JobStore
from services.common.logging import _RequestIdFilter
from services.common.queue import GPU_QUEUE, QueueSettings, create_celery_app
from services.common.storage import LocalArtifactStore
from services.gateway.app import create_app
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings
from tests.job_records import images, outcome

BODY: dict[str, Any] = {
    "context": {"account": "acme", "text": "summer sale", "keywords": ["beach"]},
    "target": {"name": "likes", "level": "high"},
    "count": 2,
    "strategy": "best_of_n",
    "candidates": 4,
}


class Api:
    def __init__(
        self, client: TestClient, keys: KeyStore, celery: Celery, db: Database, drain: Any
    ) -> None:
        self.client = client
        self.drain = drain
        self.celery = celery
        self.store = JobStore(db)
        self.key = keys.create("tests").key
        self.other_key = keys.create("someone else").key

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", **extra}

    def generate(
        self, body: dict[str, Any] = BODY, *, key: str | None = None, **headers: str
    ) -> Any:
        return self.client.post("/v1/generate", json=body, headers=self.headers(key, **headers))

    def sent_job_ids(self) -> list[str]:
        """Drain the broker's queue: the ids of the tasks the gateway sent."""
        return self.drain(self.celery, GPU_QUEUE)


def start(tmp_path: Path, drain: Any, **overrides: Any) -> Iterator[Api]:
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    queue = QueueSettings(
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        result_backend=f"db+sqlite:///{tmp_path / 'results.db'}",
    )
    celery = create_celery_app(queue, name="test-gateway")
    settings = GatewaySettings.model_validate(
        {
            "rate_limit": "1000/minute",
            "database_url": db.url,
            "artifact_root": tmp_path / "artifacts",
            **overrides,
        }
    )
    with TestClient(create_app(settings, database=db, celery=celery)) as client:
        yield Api(client, KeyStore(db), celery, db, drain)
    db.dispose()


@pytest.fixture
def api(tmp_path: Path, drain_queue: Any) -> Iterator[Api]:
    yield from start(tmp_path, drain_queue)


def test_generate_answers_202_with_a_job_and_sends_its_task(api: Api) -> None:
    response = api.generate()
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "queued"
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert response.headers["location"] == body["status_url"]
    assert api.sent_job_ids() == [body["job_id"]]
    assert api.store.get(body["job_id"]).published_at is not None


def test_the_submit_is_logged_under_the_request_id_with_the_job_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """What ties a request to its job: the worker's lines carry the job id alone."""
    caplog.handler.addFilter(_RequestIdFilter())  # what configure_logging's handler does
    with caplog.at_level(logging.INFO, logger="services.gateway.generation"):
        job_id = api.generate(**{"X-Request-ID": "req-42"}).json()["job_id"]
        api.generate(**{"X-Request-ID": "req-43", "Idempotency-Key": "k1"})
        api.generate(**{"X-Request-ID": "req-44", "Idempotency-Key": "k1"})
    lines = [
        (r.request_id, r.getMessage()) for r in caplog.records if r.name.endswith("generation")
    ]
    assert lines[0] == ("req-42", f"job {job_id} submitted")
    assert lines[1][0] == "req-43" and lines[1][1].endswith(" submitted")
    assert lines[2] == ("req-44", lines[1][1].replace("submitted", "replayed"))


def test_a_queued_job_shows_its_request_seed_and_queue_position(api: Api) -> None:
    first = api.generate().json()["job_id"]
    second = api.generate().json()["job_id"]
    status = api.client.get(f"/v1/jobs/{second}", headers=api.headers()).json()
    assert status["state"] == "queued" and status["queue_position"] == 2
    assert status["progress"] is None and status["images"] == [] and status["error"] is None
    # The gateway draws the seed once, so that a redelivered task makes the same images.
    assert isinstance(status["request"]["seed"], int)
    assert status["request"]["candidates"] == 4
    assert api.client.get(f"/v1/jobs/{first}", headers=api.headers()).json()["queue_position"] == 1


def test_idempotency_key_replays_the_job_and_refuses_another_body(api: Api) -> None:
    first = api.generate(**{"Idempotency-Key": "campaign-42"})
    again = api.generate(**{"Idempotency-Key": "campaign-42"})
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert api.sent_job_ids() == [first.json()["job_id"]]  # sent once, not twice
    clash = api.generate({**BODY, "count": 3}, **{"Idempotency-Key": "campaign-42"})
    assert clash.status_code == 409
    assert clash.json()["error"]["type"] == "conflict"


def test_a_bad_idempotency_key_is_refused(api: Api) -> None:
    response = api.generate(**{"Idempotency-Key": "x" * 300})
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"count": 0}, "count"),
        ({"count": 17}, "count"),
        ({"width": 100}, "width"),
        ({"width": 4096}, "width"),
        ({"strategy": "magic"}, "strategy"),
        ({"candidates": 1}, "candidates"),
        ({"seed": -1}, "seed"),
        ({"surprise": True}, "surprise"),
        ({"context": {"account": "bad account!"}}, "account"),
    ],
)
def test_bad_requests_get_a_typed_422_and_create_nothing(
    api: Api, change: dict[str, Any], where: str
) -> None:
    response = api.generate({**BODY, **change})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "invalid_input"
    assert where in response.json()["error"]["message"]
    assert api.store.queued_count() == 0


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"candidates": 33}, "33 images to generate; at most 32"),
        ({"strategy": "prompt", "candidates": None, "count": 16, "width": 1536}, "width 1536"),
        ({"steps": 120}, "120 steps; at most 50"),
    ],
)
def test_requests_beyond_the_deployments_limits_are_refused_at_submit(
    api: Api, change: dict[str, Any], where: str
) -> None:
    response = api.generate({**BODY, **change})
    assert response.status_code == 422, response.text
    assert where in response.json()["error"]["message"]
    assert api.store.queued_count() == 0 and api.sent_job_ids() == []


def test_one_key_cannot_fill_the_queue_every_key_shares(
    tmp_path: Path, drain_queue: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOIG_GENERATION_MAX_QUEUED_PER_OWNER", "2")
    for api in start(tmp_path, drain_queue):
        assert [api.generate().status_code for _ in range(2)] == [202, 202]
        refused = api.generate()
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert api.generate(key=api.other_key).status_code == 202  # another key still may
        assert api.store.queued_count() == 3


def test_generate_needs_an_api_key(api: Api) -> None:
    assert api.client.post("/v1/generate", json=BODY).status_code == 401


def test_a_body_larger_than_a_request_needs_is_413_and_creates_nothing(api: Api) -> None:
    big = {**BODY, "context": {"account": "acme", "text": "x" * (80 * 1024)}}
    response = api.generate(big)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "payload_too_large"
    assert api.store.queued_count() == 0


def finish_with_one_image(api: Api, job_id: str) -> str:
    """Complete ``job_id`` as a worker would, with one stored PNG; returns the image's id."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 40)).save(buffer, format="PNG")
    root = api.client.app.state.settings.artifact_root  # type: ignore[attr-defined]
    stored = LocalArtifactStore(root).put(buffer.getvalue(), namespace="generated", suffix=".png")
    lease = api.store.claim(job_id, worker="w", lease_seconds=60)
    assert lease is not None
    image = dataclasses.replace(images(1)[0], artifact_key=stored.key, sha256=stored.sha256)
    assert api.store.complete(lease, outcome=outcome(), images=[image])
    return f"{job_id}-1"


def test_jobs_and_images_belong_to_the_key_that_made_them(api: Api) -> None:
    job_id = api.generate().json()["job_id"]
    other = api.headers(api.other_key)
    assert api.client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.headers()).status_code == 200
    image_id = finish_with_one_image(api, job_id)
    # The image exists: its owner gets it, another key gets the same 404 as for no image.
    mine = api.client.get(f"/v1/images/{image_id}", headers=api.headers())
    assert mine.status_code == 200 and mine.content.startswith(b"\x89PNG")
    assert api.client.get(f"/v1/images/{image_id}", headers=other).status_code == 404
    assert api.client.get(f"/v1/images/{job_id}-2", headers=api.headers()).status_code == 404


def test_cancel_while_queued_is_immediate(api: Api) -> None:
    job_id = api.generate().json()["job_id"]
    response = api.client.delete(f"/v1/jobs/{job_id}", headers=api.headers())
    assert response.status_code == 200
    assert response.json()["state"] == "canceled"
    assert response.json()["queue_position"] is None
    # Idempotent: cancelling a canceled job says so again.
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=api.headers()).json()["state"] == (
        "canceled"
    )


def test_health_reports_the_broker(api: Api) -> None:
    assert api.client.get("/health").json()["upstreams"]["queue"] == "ok"


def test_polling_has_its_own_per_key_limit(tmp_path: Path, drain_queue: Any) -> None:
    for api in start(tmp_path, drain_queue, poll_rate_limit="3/minute"):
        job_id = api.generate().json()["job_id"]
        for _ in range(3):
            assert api.client.get(f"/v1/jobs/{job_id}", headers=api.headers()).status_code == 200
        refused = api.client.get(f"/v1/jobs/{job_id}", headers=api.headers())
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert api.client.get("/v1/images/nope", headers=api.headers()).status_code == 429
        # Polling did not spend the key's budget for work.
        assert api.generate().status_code == 202


def test_unknown_jobs_are_404(api: Api) -> None:
    assert api.client.get("/v1/jobs/nope", headers=api.headers()).status_code == 404
    assert api.client.delete("/v1/jobs/nope", headers=api.headers()).status_code == 404


def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path, drain_queue: Any) -> None:
    for api in start(tmp_path, drain_queue, max_queued_jobs=2, queue_retry_after_seconds=7):
        first = api.generate(**{"Idempotency-Key": "first"})
        assert first.status_code == 202
        assert api.generate().status_code == 202
        refused = api.generate()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "7"
        assert refused.json()["error"]["type"] == "overloaded"
        assert api.store.queued_count() == 2
        # A client retrying a job it already made is answered even while the queue is full.
        replay = api.generate(**{"Idempotency-Key": "first"})
        assert replay.status_code == 202
        assert replay.json()["job_id"] == first.json()["job_id"]


def test_a_broker_that_is_down_loses_no_job(tmp_path: Path) -> None:
    """The job is saved first; unsent, it waits for the worker's sweeper to send it."""
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    queue = QueueSettings(
        broker_url="redis://127.0.0.1:1/0", result_backend=f"db+sqlite:///{tmp_path / 'r.db'}"
    )
    celery = create_celery_app(queue, name="test-gateway")
    settings = GatewaySettings(rate_limit="1000/minute", database_url=db.url)
    with TestClient(create_app(settings, database=db, celery=celery)) as client:
        key = KeyStore(db).create("tests").key
        response = client.post(
            "/v1/generate", json=BODY, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 202
        job = JobStore(db).get(response.json()["job_id"])
        assert job.state.value == "queued" and job.published_at is None
        assert JobStore(db).jobs_to_publish(unpublished_for=0.0) == [job.id]
        # Health says so, and the gateway stays in rotation: jobs are delayed, not lost.
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["upstreams"]["queue"] != "ok"
    db.dispose()
