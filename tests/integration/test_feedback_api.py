"""POST/GET /v1/feedback through the gateway app: the observed KPI of a generated image (by id)
or of any image sent with its context, deduplicated, owned by its key, listed back in pages,
kept past the retention of the job that made the image, and readable by the trainer.

On SQLite and on the real PostgreSQL (marked), through the ``database`` fixture.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.common.db import Database
from services.common.feedback import FeedbackStore
from services.common.jobs import JobStore
from services.common.queue import QueueSettings, create_celery_app
from services.common.storage import LocalArtifactStore
from services.gateway.app import create_app
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings
from services.generator.retention import JobRetention
from services.trainer.ingest.feedback import feedback_rows, write_rows_jsonl
from services.trainer.ingest.rows import read_rows
from tests.job_records import images, outcome

POSTED = "2024-05-01T12:00:00+00:00"
CONTEXT = {"account": "acme", "text": "summer sale", "keywords": ["beach"], "posted_at": POSTED}
MAX_IMAGE_BYTES = 4096


def png(rgb: tuple[int, int, int] = (200, 30, 40), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Api:
    def __init__(self, client: TestClient, db: Database, artifacts: LocalArtifactStore) -> None:
        self.client = client
        self.jobs = JobStore(db)
        self.feedback_store = FeedbackStore(db)
        self.artifacts = artifacts
        keys = KeyStore(db)
        self.key = keys.create("tests").key
        self.other_key = keys.create("someone else").key

    def headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def feedback(self, body: dict[str, Any], *, key: str | None = None) -> httpx.Response:
        return self.client.post("/v1/feedback", json=body, headers=self.headers(key))

    def get(self, url: str, *, key: str | None = None, **params: Any) -> httpx.Response:
        return self.client.get(url, params=params, headers=self.headers(key))

    def generated_image(self, context: dict[str, Any] | None = None, data: bytes = b"") -> str:
        """A job of this key, finished as a worker would with one stored PNG: its image id."""
        body = {"context": context or {"account": "acme", "text": "summer sale"}}
        response = self.client.post("/v1/generate", json=body, headers=self.headers(None))
        job_id = response.json()["job_id"]
        stored = self.artifacts.put(data or png(), namespace="generated", suffix=".png")
        lease = self.jobs.claim(job_id, worker="w", lease_seconds=60)
        assert lease is not None
        image = dataclasses.replace(
            images(1)[0], artifact_key=stored.key, sha256=stored.sha256, width=8, height=8
        )
        assert self.jobs.complete(lease, outcome=outcome(), images=[image])
        return f"{job_id}-1"


@pytest.fixture
def api(tmp_path: Path, database: Database) -> Iterator[Api]:
    celery = create_celery_app(
        QueueSettings(
            broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
            result_backend=f"db+sqlite:///{tmp_path / 'results.db'}",
        ),
        name="test-feedback",
    )
    settings = GatewaySettings.model_validate(
        {
            "rate_limit": "1000/minute",
            "database_url": database.url,
            "artifact_root": tmp_path / "artifacts",
            "image_limits": {"max_bytes": MAX_IMAGE_BYTES},
        }
    )
    with TestClient(create_app(settings, database=database, celery=celery)) as client:
        yield Api(client, database, LocalArtifactStore(tmp_path / "artifacts"))


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    message: str = error["message"]
    return message


def test_feedback_on_a_generated_image_is_recorded_once_and_replayed(api: Api) -> None:
    image_id = api.generated_image()
    body = {"image_id": image_id, "context": CONTEXT, "kpi_name": "likes", "kpi_value": 120}
    created = api.feedback(body)
    assert created.status_code == 201, created.text
    record = created.json()
    assert created.headers["location"] == f"/v1/feedback/{record['id']}"
    assert "idempotent-replayed" not in created.headers
    assert record["image_id"] == image_id
    assert record["creative_sha256"] == hashlib.sha256(png()).hexdigest()
    assert record["context"] == {**CONTEXT, "posted_at": "2024-05-01T12:00:00Z"}
    assert (record["kpi_name"], record["kpi_value"], record["revision"]) == ("likes", 120.0, 1)

    again = api.feedback(body)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == record
    assert api.get(f"/v1/feedback/{record['id']}").json() == record
    assert api.get("/v1/feedback").json() == {"items": [record], "next_cursor": None}


def test_a_generated_image_takes_its_jobs_context_when_that_has_a_post_time(api: Api) -> None:
    with_time = api.generated_image(CONTEXT)
    record = api.feedback({"image_id": with_time, "kpi_name": "clicks", "kpi_value": 3}).json()
    assert record["context"]["text"] == "summer sale"
    assert record["context"]["posted_at"] == "2024-05-01T12:00:00Z"

    without_time = api.generated_image(data=png((1, 2, 3)))
    refused = api.feedback({"image_id": without_time, "kpi_name": "likes", "kpi_value": 1})
    assert "has no posted_at" in assert_error(refused, 422, "invalid_input")
    # The context the creative was really posted with replaces the job's.
    posted = {"account": "acme-eu", "posted_at": POSTED}
    fixed = api.feedback(
        {"image_id": without_time, "context": posted, "kpi_name": "likes", "kpi_value": 1}
    )
    assert fixed.status_code == 201 and fixed.json()["context"]["account"] == "acme-eu"


def test_another_value_is_a_conflict_until_sent_as_a_correction(api: Api) -> None:
    body = {"image_base64": b64(png()), "context": CONTEXT, "kpi_name": "likes", "kpi_value": 120}
    first = api.feedback(body).json()
    clash = api.feedback({**body, "kpi_value": 95})
    message = assert_error(clash, 409, "conflict")
    assert "value 120, not 95" in message and '"correction": true' in message
    assert api.get(f"/v1/feedback/{first['id']}").json() == first

    corrected = api.feedback({**body, "kpi_value": 95, "correction": True})
    assert corrected.status_code == 200
    assert "idempotent-replayed" not in corrected.headers
    record = corrected.json()
    assert (record["id"], record["kpi_value"], record["revision"]) == (first["id"], 95.0, 2)
    assert api.get(f"/v1/feedback/{first['id']}").json() == record


def test_a_generated_image_sent_back_as_bytes_is_the_same_creative(api: Api) -> None:
    image_id = api.generated_image()
    by_id = {"image_id": image_id, "context": CONTEXT, "kpi_name": "likes", "kpi_value": 7}
    record = api.feedback(by_id).json()
    data = api.get(f"/v1/images/{image_id}").content
    as_bytes = {"image_base64": b64(data), "context": CONTEXT, "kpi_name": "likes", "kpi_value": 7}
    again = api.feedback(as_bytes)
    assert again.status_code == 200 and again.json() == record  # image_id still named
    # The same image posted on another account is another creative.
    elsewhere = api.feedback({**as_bytes, "context": {**CONTEXT, "account": "globex"}})
    assert elsewhere.status_code == 201 and elsewhere.json()["id"] != record["id"]


def test_feedback_belongs_to_the_key_that_sent_it(api: Api) -> None:
    image_id = api.generated_image()
    body = {"image_id": image_id, "context": CONTEXT, "kpi_name": "likes", "kpi_value": 5}
    record = api.feedback(body).json()
    other = api.other_key
    assert_error(api.feedback(body, key=other), 404, "not_found")
    assert_error(api.get(f"/v1/feedback/{record['id']}", key=other), 404, "not_found")
    assert_error(api.get("/v1/feedback/no-such-record"), 404, "not_found")
    assert api.get("/v1/feedback", key=other).json() == {"items": [], "next_cursor": None}
    # Its own report of the same image, with another value, is its own record: no conflict.
    inline = {"image_base64": b64(png()), "context": CONTEXT, "kpi_name": "likes", "kpi_value": 9}
    theirs = api.feedback(inline, key=other)
    assert theirs.status_code == 201 and theirs.json()["id"] != record["id"]
    assert api.client.post("/v1/feedback", json=body).status_code == 401


def test_an_uploaded_image_is_checked_at_the_edge(api: Api) -> None:
    def send(data: bytes, **context: Any) -> httpx.Response:
        body = {
            "image_base64": b64(data),
            "context": {**CONTEXT, **context},
            "kpi_name": "likes",
            "kpi_value": 1,
        }
        return api.feedback(body)

    assert "not a readable image" in assert_error(send(b"not an image"), 422, "invalid_image")
    # Noise does not compress: a 64x64 PNG of it is over the 4 KiB image limit.
    noisy = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    big = buffer.getvalue()
    assert len(big) > MAX_IMAGE_BYTES
    assert_error(send(big), 413, "payload_too_large")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert "in the future" in assert_error(send(png(), posted_at=tomorrow), 422, "invalid_input")
    refused = api.feedback({"image_base64": b64(png()), "kpi_name": "likes", "kpi_value": 1})
    assert "context: required" in assert_error(refused, 422, "invalid_input")
    plain = api.client.post(
        "/v1/feedback",
        content=b"likes=1",
        headers={**api.headers(None), "Content-Type": "text/plain"},
    )
    assert_error(plain, 415, "unsupported_media_type")
    assert api.get("/v1/feedback").json()["items"] == []  # nothing refused was recorded


def test_messagepack_carries_the_image_as_bytes(api: Api) -> None:
    body = {"image_base64": png(), "context": CONTEXT, "kpi_name": "likes", "kpi_value": 4}
    response = api.client.post(
        "/v1/feedback",
        content=msgpack.packb(body),
        headers={**api.headers(None), "Content-Type": "application/msgpack"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["creative_sha256"] == hashlib.sha256(png()).hexdigest()


def test_the_list_pages_newest_first_and_filters(api: Api) -> None:
    ids = []
    for index, (account, kpi) in enumerate(
        [("acme", "likes"), ("acme", "clicks"), ("globex", "likes"), ("acme", "likes")]
    ):
        body = {
            "image_base64": b64(png((index, 0, 0))),
            "context": {**CONTEXT, "account": account},
            "kpi_name": kpi,
            "kpi_value": index,
        }
        ids.append(api.feedback(body).json()["id"])

    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/feedback", **params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    def found(**filters: str) -> list[str]:
        return [item["id"] for item in api.get("/v1/feedback", **filters).json()["items"]]

    assert found(account="globex") == [ids[2]]
    assert found(account="acme", kpi_name="likes") == [ids[3], ids[0]]
    sha = hashlib.sha256(png((1, 0, 0))).hexdigest()
    assert found(creative_sha256=sha) == [ids[1]]
    assert "cursor" in assert_error(api.get("/v1/feedback", cursor="x"), 422, "invalid_input")
    assert "limit" in assert_error(api.get("/v1/feedback", limit=0), 422, "invalid_input")
    assert_error(api.get("/v1/feedback", acount="acme"), 422, "invalid_input")
    assert_error(api.get("/v1/feedback", account="a b"), 422, "invalid_input")


def test_feedback_outlives_the_jobs_retention_and_reads_back_as_ingest_rows(
    api: Api, tmp_path: Path
) -> None:
    """Retention deletes a finished job's rows and image files; the record keeps its copy, and
    the trainer reads it as a row of the account's history."""
    image_id = api.generated_image()
    body = {"image_id": image_id, "context": CONTEXT, "kpi_name": "likes", "kpi_value": 42}
    record = api.feedback(body).json()
    retention = JobRetention(api.jobs, api.artifacts, keep_for=timedelta(0), every=0)
    report = retention.run(now=datetime.now(UTC) + timedelta(hours=2))
    assert (report.jobs, report.files) == (1, 1)
    assert_error(api.get(f"/v1/images/{image_id}"), 404, "not_found")
    assert api.get(f"/v1/feedback/{record['id']}").json() == record

    exported = feedback_rows(
        api.feedback_store, api.artifacts, account="acme", media_dir=tmp_path / "data" / "media"
    )
    assert exported.skipped == []
    read = read_rows(write_rows_jsonl(exported.rows, tmp_path / "data" / "feedback.jsonl"))
    assert read.summary.errors == [] and read.rows == exported.rows
    (row,) = read.rows
    assert (row.id, row.kpi_name, row.kpi_value) == (f"feedback-{record['id']}", "likes", 42.0)
    assert row.image_sha256 == record["creative_sha256"]
    assert row.media.read_bytes() == png()
