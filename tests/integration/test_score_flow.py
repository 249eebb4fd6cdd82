"""The public API on real small models, in one process: gateway -> scorer -> featurizer and
describer, each a real app wired through its HTTP client (no fakes anywhere)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from services.common.clients import DescriberClient, FeaturizerClient, ScorerClient
from services.common.db import Database
from services.demo.__main__ import SAMPLES
from services.describer.app import create_app as create_describer
from services.featurizer.app import create_app as create_featurizer
from services.gateway.app import create_app as create_gateway
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings
from services.scorer.app import create_app as create_scorer
from services.tooling.models import prepare_all

pytestmark = pytest.mark.asyncio(loop_scope="module")


def transport(app: FastAPI) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=app)


@pytest.fixture(scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    # The base SmolLM2 (or a published BoigLLM, if one is there): the flow, not the model.
    # In a thread: preparing models may run an event loop of its own.
    await asyncio.to_thread(prepare_all, world_sd=False, boigllm=False, log=False)
    featurizer_app, describer_app = create_featurizer(), create_describer()
    async with AsyncExitStack() as stack:
        # ASGITransport runs no lifespan, so start each app's models here as a server would.
        await stack.enter_async_context(featurizer_app.router.lifespan_context(featurizer_app))
        await stack.enter_async_context(describer_app.router.lifespan_context(describer_app))
        featurizer = FeaturizerClient("http://featurizer", transport=transport(featurizer_app))
        describer = DescriberClient("http://describer", transport=transport(describer_app))
        scorer_app = create_scorer(featurizer=featurizer, describer=describer)
        await stack.enter_async_context(scorer_app.router.lifespan_context(scorer_app))
        scorer = ScorerClient("http://scorer", transport=transport(scorer_app))
        database = Database(f"sqlite:///{tmp_path_factory.mktemp('gw') / 'gw.db'}")
        database.create_schema()
        gateway_app = create_gateway(
            GatewaySettings(rate_limit="1000/minute"),
            scorer=scorer,
            describer=describer,
            database=database,
        )
        await stack.enter_async_context(gateway_app.router.lifespan_context(gateway_app))
        key = KeyStore(database).create("integration").key
        client = httpx.AsyncClient(
            base_url="http://gateway", transport=transport(gateway_app), timeout=300
        )
        stack.push_async_callback(client.aclose)
        for closable in (featurizer, describer, scorer):
            stack.push_async_callback(closable.aclose)
        yield client, key


def sample_creatives() -> list[dict[str, str]]:
    return [
        {"id": path.stem, "image_base64": base64.b64encode(path.read_bytes()).decode()}
        for path in sorted(SAMPLES.glob("*.*g"))
    ]


def context() -> dict[str, Any]:
    request: dict[str, Any] = json.loads((SAMPLES / "request.json").read_text())
    return request


async def test_match_ranks_samples_with_real_models(gateway: tuple[httpx.AsyncClient, str]) -> None:
    client, key = gateway
    body = {**context(), "reward": "match", "creatives": sample_creatives()}
    response = await client.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert [item["rank"] for item in result["results"]] == list(
        range(1, len(body["creatives"]) + 1)
    )
    totals = [item["total"] for item in result["results"]]
    assert totals == sorted(totals, reverse=True) and all(0 <= t <= 1 for t in totals)
    assert len(set(totals)) > 1, "a reward that scores every creative alike ranks nothing"
    target = result["targets"][0]
    assert target["level"] == "high" and target["verbalization"]["colors"] and target["text"]
    by_id = {item["id"]: item["verbalization"] for item in result["results"]}
    # The featurizer really looked: the drawn star is gold on black, the circle is detected.
    star_colors = {c["name"] for c in by_id["gold-star"]["colors"]}
    assert "black" in star_colors
    assert "star" in {o["label"] for o in by_id["gold-star"]["objects"]}
    assert "circle" in {o["label"] for o in by_id["sunny-circle"]["objects"]}
    assert set(result["models"]) >= {"featurizer", "describer"}


async def test_likelihood_gives_level_probabilities(gateway: tuple[httpx.AsyncClient, str]) -> None:
    client, key = gateway
    body = {**context(), "reward": "likelihood", "creatives": sample_creatives()[:3]}
    response = await client.post("/v1/score", json=body, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    for item in response.json()["results"]:
        probabilities = [item["breakdown"][f"p_{level}"] for level in ("low", "medium", "high")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
        assert 0 <= item["total"] <= 1


async def test_contrastive_compares_with_high_and_low(
    gateway: tuple[httpx.AsyncClient, str],
) -> None:
    client, key = gateway
    body = {**context(), "reward": "contrastive", "creatives": sample_creatives()[:2]}
    response = await client.post("/v1/score", json=body, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    assert {t["level"] for t in response.json()["targets"]} == {"high", "low"}
    assert all(-1 <= item["total"] <= 1 for item in response.json()["results"])


async def test_edits_reach_the_caller_through_the_gateway(
    gateway: tuple[httpx.AsyncClient, str],
) -> None:
    client, key = gateway
    body = {**context(), "reward": "match", "creatives": sample_creatives(), "max_edits": 3}
    response = await client.post("/v1/score", json=body, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    # The samples are photos and drawings, none of them the brief: there is something to fix.
    assert any(item["edits"] for item in results)
    for item in results:
        gains = [edit["gain"] for edit in item["edits"]]
        assert len(gains) <= 3 and all(gain > 0 for gain in gains)
        assert gains == sorted(gains, reverse=True)
        for edit in item["edits"]:
            assert edit["reward"] == pytest.approx(item["total"] + edit["gain"])
            assert edit["summary"]
        assert (item["total_with_edits"] is None) == (not item["edits"])
    refused = await client.post(
        "/v1/score",
        json={**body, "reward": "likelihood"},
        headers={"X-API-Key": key},
    )
    assert refused.status_code == 422 and "max_edits" in refused.json()["error"]["message"]


async def test_describe_returns_a_brief(gateway: tuple[httpx.AsyncClient, str]) -> None:
    client, key = gateway
    response = await client.post(
        "/v1/describe", json=context(), headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    brief = response.json()
    assert brief["text"].startswith(("caption:", "colors:"))
    assert brief["model"]["name"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
async def test_a_broken_creative_is_named_and_nothing_else_breaks(
    gateway: tuple[httpx.AsyncClient, str], fmt: str
) -> None:
    # A cut PNG is refused by the gateway's container check; a cut JPEG only by the
    # featurizer's full decode. Either way the caller learns which creative it was.
    client, key = gateway
    creatives = sample_creatives()[:2]
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (200, 40, 40)).save(buffer, format=fmt)
    data = buffer.getvalue()
    creatives[1] = {
        "id": "half-a-file",
        "image_base64": base64.b64encode(data[: len(data) // 2]).decode(),
    }
    body = {**context(), "creatives": creatives}
    response = await client.post("/v1/score", json=body, headers={"X-API-Key": key})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_image" and "half-a-file" in error["message"]
    assert (await client.get("/health")).status_code == 200
