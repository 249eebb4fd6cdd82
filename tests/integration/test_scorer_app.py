"""The scorer app over HTTP, wired to stand-in featurizer/describer apps through ASGI.

The stand-ins are wiring fakes: the featurizer reads each image's mean colour, the describer
says "high is red, low is blue". They speak the real contracts and error shape.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from services.common import metrics, wire
from services.common.app import create_service_app
from services.common.clients import DescriberClient, FeaturizerClient
from services.common.contracts import (
    ColorSwatch,
    DescribeRequest,
    DescribeResponse,
    FeaturizeRequest,
    FeaturizeResponse,
    FeaturizeResult,
    KpiLevel,
    LevelDistribution,
    LikelihoodRequest,
    LikelihoodResponse,
    ModelInfo,
    Verbalization,
)
from services.common.errors import InvalidImage, ModelUnavailable
from services.common.images import decode_for_analysis
from services.common.settings import BatchLimits, ImageLimits
from services.scorer.app import create_app
from services.scorer.settings import ScorerSettings

RED, BLUE, DARK_RED = (220, 20, 20), (20, 20, 220), (150, 30, 30)


def png_base64(rgb: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def palette(rgb: tuple[int, int, int]) -> Verbalization:
    return Verbalization(colors=[ColorSwatch(name="c", rgb=rgb, coverage=1.0)])


class StandIns:
    """Switches the tests flip to make the stand-ins fail."""

    def __init__(self) -> None:
        self.describer_error: Exception | None = None
        self.featurizer_healthy = True
        self.describe_calls: list[DescribeRequest] = []


def featurizer_app(state: StandIns) -> FastAPI:
    async def readiness() -> dict[str, Any]:
        return {"ready": state.featurizer_healthy}

    app = create_service_app(
        service="fake-featurizer", version="0", max_body_bytes=1 << 24, readiness=readiness
    )

    @app.post("/featurize")
    async def featurize(
        # The scorer's client sends MessagePack (raw image bytes), read as the featurizer does.
        request: Annotated[FeaturizeRequest, Depends(wire.body_reader(FeaturizeRequest))],
    ) -> FeaturizeResponse:
        results = []
        for image in request.images:
            what = f"image {image.id!r}"
            decoded = decode_for_analysis(image.data, limits=ImageLimits(), what=what)
            pixels = decoded.image
            rgb = pixels.resize((1, 1)).getpixel((0, 0))
            assert isinstance(rgb, tuple)
            results.append(
                FeaturizeResult(
                    id=image.id,
                    width=pixels.width,
                    height=pixels.height,
                    animated=decoded.animated,
                    verbalization=palette((rgb[0], rgb[1], rgb[2])),
                )
            )
        return FeaturizeResponse(
            results=results,
            featurizer_version="fake-featurizer-1",
            detector=ModelInfo(name="yolo-fake", version="d1"),
        )

    return app


def describer_app(state: StandIns) -> FastAPI:
    app = create_service_app(service="fake-describer", version="0", max_body_bytes=1 << 24)
    model = ModelInfo(name="boigllm-fake", version="m1")

    @app.post("/describe")
    async def describe(request: DescribeRequest) -> DescribeResponse:
        state.describe_calls.append(request)
        if state.describer_error is not None:
            raise state.describer_error
        rgb = RED if request.target.level is KpiLevel.HIGH else BLUE
        return DescribeResponse(
            verbalization=palette(rgb),
            text=f"brief {request.target.level}",
            repairs=[],
            model=model,
            prompt_version="p1",
            cached=False,
        )

    @app.post("/likelihood")
    async def likelihood(request: LikelihoodRequest) -> LikelihoodResponse:
        results = []
        for verbalization in request.verbalizations:
            redness = verbalization.colors[0].rgb[0] / 255
            p_high = round(0.9 * redness, 4)
            results.append(
                LevelDistribution(
                    probabilities={
                        KpiLevel.LOW: 1 - p_high - 0.05,
                        KpiLevel.MEDIUM: 0.05,
                        KpiLevel.HIGH: p_high,
                    },
                    expected_percentile=p_high,
                )
            )
        return LikelihoodResponse(results=results, model=model, prompt_version="p1")

    return app


@pytest.fixture
def stand_ins() -> StandIns:
    return StandIns()


@pytest.fixture
def client(stand_ins: StandIns) -> Iterator[TestClient]:
    featurizer = FeaturizerClient(
        "http://featurizer", transport=httpx.ASGITransport(app=featurizer_app(stand_ins))
    )
    describer = DescriberClient(
        "http://describer", transport=httpx.ASGITransport(app=describer_app(stand_ins))
    )
    # No health cache: each probe here must see the stand-ins' state of the moment.
    settings = ScorerSettings(batch_limits=BatchLimits(max_items=3), health_cache_seconds=0)
    app = create_app(settings, featurizer=featurizer, describer=describer)
    with TestClient(app) as test_client:
        yield test_client


def score_body(reward: str, creatives: dict[str, str], level: str = "high") -> dict[str, Any]:
    return {
        "context": {"account": "acme", "text": "summer sale", "keywords": ["sale"]},
        "target": {"name": "likes", "level": level},
        "reward": reward,
        "creatives": [{"id": cid, "image_base64": data} for cid, data in creatives.items()],
    }


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "message", "request_id"}
    assert error["type"] == error_type
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


CREATIVES = {"blue": png_base64(BLUE), "red": png_base64(RED), "darkred": png_base64(DARK_RED)}


def test_match_ranks_best_first_with_breakdown(client: TestClient) -> None:
    response = client.post("/score", json=score_body("match", CREATIVES))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["results"]] == ["red", "darkred", "blue"]
    assert [r["rank"] for r in body["results"]] == [1, 2, 3]
    assert body["results"][0]["total"] == pytest.approx(1.0, abs=0.01)
    assert body["results"][0]["breakdown"]["colors"] == pytest.approx(1.0, abs=0.01)
    assert body["weights"] == {"colors": 1.0}
    assert body["targets"][0]["level"] == "high"
    assert body["models"]["describer"] == {"name": "boigllm-fake", "version": "m1"}
    assert body["models"]["detector"] == {"name": "yolo-fake", "version": "d1"}


def test_contrastive_compares_high_and_low(client: TestClient, stand_ins: StandIns) -> None:
    response = client.post("/score", json=score_body("contrastive", CREATIVES))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["results"]] == ["red", "darkred", "blue"]
    assert body["results"][0]["total"] > 0
    assert body["results"][-1]["total"] < 0
    assert [t["level"] for t in body["targets"]] == ["high", "low"]
    assert sorted(c.target.level for c in stand_ins.describe_calls) == ["high", "low"]


def test_likelihood_reads_the_behaviour_simulation(client: TestClient) -> None:
    response = client.post("/score", json=score_body("likelihood", CREATIVES))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["results"]] == ["red", "darkred", "blue"]
    assert set(body["results"][0]["breakdown"]) == {
        "p_low",
        "p_medium",
        "p_high",
        "expected_percentile",
    }
    assert body["targets"] == []


def test_too_many_creatives_is_422(client: TestClient) -> None:
    creatives = {f"c{i}": png_base64(RED) for i in range(4)}
    error = assert_error(
        client.post("/score", json=score_body("match", creatives)), 422, "invalid_input"
    )
    assert "limit is 3" in error["message"]


def test_unknown_reward_and_level_are_422(client: TestClient) -> None:
    assert_error(client.post("/score", json=score_body("vibes", CREATIVES)), 422, "invalid_input")
    body = score_body("match", CREATIVES, level="viral")
    assert_error(client.post("/score", json=body), 422, "invalid_input")


def test_featurizer_invalid_image_passes_through_naming_the_creative(client: TestClient) -> None:
    creatives = {"good": png_base64(RED), "broken": base64.b64encode(b"not an image").decode()}
    error = assert_error(
        client.post("/score", json=score_body("match", creatives)), 422, "invalid_image"
    )
    assert "broken" in error["message"]


def test_describer_typed_error_passes_through(client: TestClient, stand_ins: StandIns) -> None:
    stand_ins.describer_error = ModelUnavailable("BoigLLM is loading")
    error = assert_error(
        client.post("/score", json=score_body("match", CREATIVES)), 503, "model_unavailable"
    )
    assert error["message"] == "BoigLLM is loading"
    stand_ins.describer_error = InvalidImage("nope")
    assert_error(
        client.post("/score", json=score_body("contrastive", CREATIVES)), 422, "invalid_image"
    )
    stand_ins.describer_error = None
    assert client.post("/score", json=score_body("match", CREATIVES)).status_code == 200


def test_upstream_down_is_502_and_not_ready() -> None:
    featurizer = FeaturizerClient("http://127.0.0.1:1", timeout=2)
    describer = DescriberClient("http://127.0.0.1:1", timeout=2)
    app = create_app(ScorerSettings(), featurizer=featurizer, describer=describer)
    with TestClient(app) as client:
        error = assert_error(
            client.post("/score", json=score_body("match", CREATIVES)), 502, "upstream_error"
        )
        assert "unreachable" in error["message"]
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["upstreams"] == {
            "featurizer": "upstream_error",
            "describer": "upstream_error",
        }


def test_its_calls_to_the_featurizer_are_timed_as_the_scorer_s() -> None:
    """The clients the scorer builds from its settings label their hop scorer -> featurizer."""
    labels = {
        "service": "scorer",
        "upstream": "featurizer",
        "route": "/featurize",
        "outcome": "unreachable",
    }

    def calls() -> float:
        name = "boig_upstream_request_duration_seconds_count"
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = calls()
    settings = ScorerSettings(
        featurizer_url="http://127.0.0.1:1",
        describer_url="http://127.0.0.1:1",
        upstream_timeout_seconds=2,
    )
    with TestClient(create_app(settings)) as client:
        # likelihood featurizes first, then asks the describer: one call, to the featurizer.
        response = client.post("/score", json=score_body("likelihood", CREATIVES))
        assert_error(response, 502, "upstream_error")
    assert calls() == before + 1


def test_health_reports_each_upstream(client: TestClient, stand_ins: StandIns) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["upstreams"] == {"featurizer": "ok", "describer": "ok"}
    stand_ins.featurizer_healthy = False
    health = client.get("/health")
    assert health.status_code == 503
    # A starting upstream answers 503 with its own /health body, which says so.
    assert health.json()["upstreams"] == {"featurizer": "starting", "describer": "ok"}


@pytest.mark.parametrize("reward", ["match", "likelihood", "contrastive"])
def test_an_animated_creative_is_scored_from_its_first_frame_and_says_so(
    client: TestClient, reward: str
) -> None:
    frames = [Image.new("RGB", (8, 8), rgb) for rgb in (RED, BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    creatives = {"animated": base64.b64encode(buffer.getvalue()).decode(), "still": png_base64(RED)}
    response = client.post("/score", json=score_body(reward, creatives))
    assert response.status_code == 200, response.text
    notes = {result["id"]: result["notes"] for result in response.json()["results"]}
    assert notes == {"animated": ["animated image: only its first frame was scored"], "still": []}


def test_openapi_documents_the_score_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/score" in schema["paths"]


def test_edits_come_back_only_when_asked(client: TestClient) -> None:
    body = score_body("match", CREATIVES)
    plain = client.post("/score", json=body)
    assert plain.status_code == 200, plain.text
    assert all(r["edits"] == [] and r["total_with_edits"] is None for r in plain.json()["results"])

    response = client.post("/score", json={**body, "max_edits": 2})
    assert response.status_code == 200, response.text
    results = {result["id"]: result for result in response.json()["results"]}
    assert results["red"]["edits"] == []  # the stand-in target is red: nothing to change
    for creative_id in ("blue", "darkred"):
        result = results[creative_id]
        (edit,) = result["edits"]
        assert edit["kind"] == "recolor"
        assert edit["before"]["color"]["rgb"] == result["verbalization"]["colors"][0]["rgb"]
        assert edit["after"] == {
            "color": {"name": "c", "rgb": list(RED), "coverage": 1.0},
            "object": None,
            "tone": None,
            "caption": None,
        }
        assert edit["summary"].startswith("background c (") and "(220,20,20)" in edit["summary"]
        assert edit["reward"] == pytest.approx(results["red"]["total"])
        assert edit["gain"] == pytest.approx(edit["reward"] - result["total"])
        assert result["total_with_edits"] == pytest.approx(edit["reward"])


def test_edits_for_the_likelihood_reward_or_too_many_are_422(client: TestClient) -> None:
    body = {**score_body("likelihood", CREATIVES), "max_edits": 1}
    error = assert_error(client.post("/score", json=body), 422, "invalid_input")
    assert "max_edits" in error["message"] and "likelihood" in error["message"]
    body = {**score_body("match", CREATIVES), "max_edits": 11}
    error = assert_error(client.post("/score", json=body), 422, "invalid_input")
    assert "max_edits" in error["message"]


def test_openapi_documents_the_edits(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["ScoreRequest"]["properties"]["max_edits"]["maximum"] == 10
    assert "edits" in schemas["CreativeScore"]["properties"]
    assert set(schemas["Edit"]["properties"]) == {
        "kind", "summary", "before", "after", "reward", "gain"
    }  # fmt: skip
