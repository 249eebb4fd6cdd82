"""The whole product as separate processes on loopback: what `docker compose up` runs."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.demo.__main__ import SAMPLES, create_api_key
from services.tooling.models import prepare_all
from services.tooling.stack import WORKERS, LocalStack, local_stack
from tests.e2e.jobs import run_generation_job

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    models = prepare_all(world_sd=False, log=False)
    # The topology under test, on the tiny random SD: the world SD takes half an hour to
    # train and has tests of its own (it loads through the same ImagePipeline).
    tiny = {"BOIG_GENERATOR_MODEL_PATH": str(models["tiny-diffusion"])}
    with local_stack(tmp_path_factory.mktemp("stack"), extra_env=tiny) as running:
        yield running


@pytest.fixture(scope="module")
def headers(stack: LocalStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(stack.database_url)}"}


def sample_files() -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("creatives", (p.name, p.read_bytes(), "image/*")) for p in sorted(SAMPLES.glob("*.*g"))
    ]


def test_every_service_is_healthy_and_exports_metrics(stack: LocalStack) -> None:
    for name in stack.processes:
        if name in WORKERS:
            assert "boig_generation_job_seconds" in httpx.get(f"{stack.url(name)}/metrics").text
            continue
        assert httpx.get(f"{stack.url(name)}/health").json()["status"] == "ok"
        assert "boig_http_requests_total" in httpx.get(f"{stack.url(name)}/metrics").text


def test_score_samples_through_the_public_api(stack: LocalStack, headers: dict[str, str]) -> None:
    request = json.loads((SAMPLES / "request.json").read_text())
    response = httpx.post(
        f"{stack.url('gateway')}/v1/score",
        headers={**headers, "X-Request-ID": "e2e-score-1"},
        data={"request": json.dumps(request)},
        files=sample_files(),
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == len(sample_files())
    totals = [item["total"] for item in body["results"]]
    assert totals == sorted(totals, reverse=True)
    assert body["targets"][0]["level"] == "high" and body["targets"][0]["verbalization"]["colors"]
    assert {"featurizer", "describer"} <= set(body["models"])
    # One request id follows the request through gateway, scorer, featurizer and describer.
    for name in ("gateway", "scorer", "featurizer", "describer"):
        assert "e2e-score-1" in stack.log(name), name


def test_the_demos_world_sample_is_ingested_through_the_featurizer(
    stack: LocalStack, tmp_path: Path
) -> None:
    from rich.console import Console

    from services.demo.world_sample import POSTS_PER_BRAND, ingest_world_sample

    console = Console(record=True, width=120)
    outcome = ingest_world_sample(stack.url("featurizer"), tmp_path, console)

    assert outcome.summary.kept == outcome.summary.read == 4 * POSTS_PER_BRAND
    manifest = json.loads((outcome.version_dir / "manifest.json").read_text())
    assert manifest["rows"]["kept"] == 4 * POSTS_PER_BRAND
    content = (outcome.version_dir / "content" / "train.jsonl").read_text().splitlines()
    assert content and "colors:" in json.loads(content[0])["verbalization"]
    assert "dataset v1" in console.export_text()


def test_generate_through_the_real_services(stack: LocalStack, headers: dict[str, str]) -> None:
    """BoigLLM's description becomes the prompt; the real scorer ranks the candidates."""
    request = json.loads((SAMPLES / "request.json").read_text())
    body = {
        "context": request["context"],
        "target": request["target"],
        "strategy": "best_of_n",
        "count": 2,
        "candidates": 4,
        "steps": 4,
        "seed": 1,
    }
    gateway = stack.url("gateway")
    status = run_generation_job(gateway, headers, body, timeout=300)
    outcome = status["outcome"]
    assert outcome["target_description"] and outcome["prompt"]
    assert {"diffusion", "describer", "featurizer"} <= set(outcome["models"])
    assert outcome["reward"] == "match" and outcome["candidates"] == 4
    rewards = [image["reward"] for image in status["images"]]
    assert len(rewards) == 2 and rewards == sorted(rewards, reverse=True)
    png = httpx.get(f"{gateway}{status['images'][0]['url']}", headers=headers)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_without_a_key_nothing_is_scored(stack: LocalStack) -> None:
    response = httpx.post(f"{stack.url('gateway')}/v1/score", files=sample_files(), timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"


def test_a_dead_upstream_is_a_typed_502_and_the_gateway_stays_up(
    tmp_path: Path, stack: LocalStack, headers: dict[str, str]
) -> None:
    # Last in this module: it stops the describer for good.
    stack.processes["describer"].send_signal(signal.SIGKILL)
    stack.processes["describer"].wait(timeout=10)
    response = httpx.post(
        f"{stack.url('gateway')}/v1/describe",
        headers=headers,
        json={"context": {"account": "acme", "text": "new shoes"}},
        timeout=30,
    )
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert httpx.get(f"{stack.url('gateway')}/health").status_code == 200
