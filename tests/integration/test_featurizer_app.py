"""The featurizer over HTTP: the real app, real decoding, the real shapes detector."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from services.common import wire
from services.common.contracts import FeaturizeRequest, ImageInput
from services.common.errors import ModelUnavailable
from services.common.settings import BatchLimits, ImageLimits, default_shapes_detector_dir
from services.featurizer.app import create_app
from services.featurizer.service import FEATURIZER_VERSION
from services.featurizer.settings import FeaturizerSettings
from services.trainer.detector.prepare import prepare_detector

LIMITS = ImageLimits(
    max_bytes=300_000, max_pixels=4_000_000, max_side=2048, max_request_pixels=2_500_000
)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def half_red_half_blue() -> Image.Image:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))
    return image


def noisy(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def request_body(*datas: str, detect_objects: bool = False) -> dict[str, Any]:
    return {
        "images": [{"id": f"img-{i}", "image_base64": data} for i, data in enumerate(datas)],
        "detect_objects": detect_objects,
    }


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = FeaturizerSettings(
        detector_backend="none", image_limits=LIMITS, batch_limits=BatchLimits(max_items=4)
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def yolo_client() -> Iterator[TestClient]:
    # Same cache as `make models` and the unit tests: trained at most once per machine.
    weights = prepare_detector(default_shapes_detector_dir())
    settings = FeaturizerSettings(detector_weights=weights, device="cpu", image_limits=LIMITS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_error(response: Any, status: int, error_type: str, message: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == error_type
    assert message in body["error"]["message"], body
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]


def test_featurizes_a_drawn_image_exactly(client: TestClient) -> None:
    response = client.post("/featurize", json=request_body(b64(png_bytes(half_red_half_blue()))))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["featurizer_version"] == FEATURIZER_VERSION
    assert body["detector"] is None
    [result] = body["results"]
    assert result["id"] == "img-0" and (result["width"], result["height"]) == (200, 100)
    assert result["verbalization"]["colors"] == [
        {"name": "blue", "rgb": [0, 0, 255], "coverage": 0.5},
        {"name": "red", "rgb": [255, 0, 0], "coverage": 0.5},
    ]
    assert "saturated" in result["verbalization"]["tones"]
    assert result["verbalization"]["objects"] == []


def test_a_msgpack_body_carries_the_files_and_answers_the_same(client: TestClient) -> None:
    data = png_bytes(half_red_half_blue())
    packed = wire.pack(FeaturizeRequest(images=[ImageInput(id="img-0", data=data)]))
    assert data in packed  # the file itself, not base64
    by_json = client.post("/featurize", json=request_body(b64(data)))
    by_msgpack = client.post(
        "/featurize", content=packed, headers={"Content-Type": "application/msgpack"}
    )
    assert by_msgpack.status_code == 200, by_msgpack.text
    assert by_msgpack.json() == by_json.json()


def test_other_content_types_are_415(client: TestClient) -> None:
    response = client.post("/featurize", content=b"<a/>", headers={"Content-Type": "text/xml"})
    assert_error(response, 415, "unsupported_media_type", "application/msgpack")


def test_accepts_jpeg_and_data_urls_in_one_batch(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 128, 128)).save(buffer, format="JPEG", quality=95)
    datas = [
        b64(buffer.getvalue()),
        "data:image/png;base64," + b64(png_bytes(half_red_half_blue())),
    ]
    response = client.post("/featurize", json=request_body(*datas))
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["verbalization"]["colors"][0]["name"] == "teal"
    assert (second["width"], second["height"]) == (200, 100)


@pytest.mark.parametrize(
    ("data", "status", "error_type", "message"),
    [
        (
            b64(png_bytes(noisy(64, 64))[:500]),
            422,
            "invalid_image",
            "images[1] ('img-1') is truncated or corrupt",
        ),
        # A malformed field is named by where it is in the body.
        ("data:image/png;base64,", 422, "invalid_input", "images.1.image_base64: Value error"),
        (
            b64(b"GIF89a? no, just some text"),
            422,
            "invalid_image",
            "images[1] ('img-1') is not a readable image",
        ),
        ("this is *not* base64!", 422, "invalid_input", "images.1.image_base64: Value error, not"),
        (b64(png_bytes(noisy(400, 400))), 413, "payload_too_large", "images[1] ('img-1') is"),
        (
            b64(png_bytes(Image.new("RGB", (3000, 10)))),
            422,
            "invalid_image",
            "images[1] ('img-1') is 3000x10",
        ),
        (b64(bomb_png(30000, 30000)), 422, "invalid_image", "images[1] ('img-1')"),
    ],
    ids=["truncated", "empty", "not-an-image", "bad-base64", "too-many-bytes", "too-wide", "bomb"],
)
def test_bad_images_are_4xx_naming_the_image_and_the_service_stays_healthy(
    client: TestClient, data: str, status: int, error_type: str, message: str
) -> None:
    good = b64(png_bytes(half_red_half_blue()))
    response = client.post("/featurize", json=request_body(good, data))
    assert_error(response, status, error_type, message)
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.post("/featurize", json=request_body(good)).status_code == 200


def test_too_many_images_is_invalid_input(client: TestClient) -> None:
    good = b64(png_bytes(Image.new("RGB", (8, 8))))
    response = client.post("/featurize", json=request_body(*[good] * 5))
    assert_error(response, 422, "invalid_input", "5 images in one request; the limit is 4")
    # Past the contract's own ceiling, request validation refuses it before the route runs.
    response = client.post("/featurize", json=request_body(*[good] * 65))
    assert_error(response, 422, "invalid_input", "images")


def test_an_animated_gif_is_featurized_from_its_first_frame_and_says_so(
    client: TestClient,
) -> None:
    frames = [Image.new("RGB", (40, 20), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    still = io.BytesIO()
    frames[1].save(still, format="GIF")
    response = client.post(
        "/featurize", json=request_body(b64(buffer.getvalue()), b64(still.getvalue()))
    )
    assert response.status_code == 200, response.text
    animated, single = response.json()["results"]
    assert animated["animated"] is True and single["animated"] is False
    assert [c["name"] for c in animated["verbalization"]["colors"]] == ["red"]
    assert [c["name"] for c in single["verbalization"]["colors"]] == ["blue"]


def test_a_request_past_its_pixel_budget_is_refused_before_decoding(client: TestClient) -> None:
    # Each bomb header passes the per-image limits; together they pass the request's budget.
    each = b64(bomb_png(1000, 1000))
    response = client.post("/featurize", json=request_body(each, each, each))
    assert_error(response, 413, "payload_too_large", "pixels together")
    assert client.get("/health").status_code == 200


def test_malformed_requests_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.post("/featurize", json={"images": []}), 422, "invalid_input", "images")
    assert_error(client.post("/featurize", content=b"{not json"), 422, "invalid_input", "")
    body = request_body(b64(png_bytes(half_red_half_blue())))
    body["images"][0]["surprise"] = 1
    assert_error(client.post("/featurize", json=body), 422, "invalid_input", "surprise")


def test_health_and_metrics_without_a_detector(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["service"] == "featurizer"
    assert health["detector"] == {"backend": "none", "loaded": False}
    client.post("/featurize", json=request_body(b64(png_bytes(half_red_half_blue()))))
    text = client.get("/metrics").text
    assert 'boig_images_processed_total{service="featurizer"}' in text
    assert 'boig_model_compute_seconds_count{operation="colors",service="featurizer"}' in text


def test_detects_objects_with_the_real_detector(yolo_client: TestClient) -> None:
    image = Image.new("RGB", (256, 256), (240, 240, 240))
    ImageDraw.Draw(image).ellipse((40, 60, 160, 180), fill=(200, 30, 30))
    response = yolo_client.post(
        "/featurize", json=request_body(b64(png_bytes(image)), detect_objects=True)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["detector"]["version"].startswith("sha256:")
    best = body["results"][0]["verbalization"]["objects"][0]
    assert best["label"] == "circle"
    x0, y0, x1, y1 = best["box"]
    assert abs(x0 - 40 / 256) < 0.06 and abs(y0 - 60 / 256) < 0.06
    assert abs(x1 - 160 / 256) < 0.06 and abs(y1 - 180 / 256) < 0.06
    health = yolo_client.get("/health").json()
    assert health["detector"]["loaded"] is True and health["detector"]["backend"] == "yolo"
    text = yolo_client.get("/metrics").text
    assert 'boig_model_queue_wait_seconds_count{operation="detect",service="featurizer"}' in text


def test_the_loaded_detector_and_its_load_time_are_exported(yolo_client: TestClient) -> None:
    detector = yolo_client.get("/health").json()["detector"]
    families = {
        family.name: family.samples
        for family in text_string_to_metric_families(yolo_client.get("/metrics").text)
    }
    served = [
        sample.labels
        for sample in families["boig_checkpoint_info"]
        if sample.labels["service"] == "featurizer" and sample.value == 1
    ]
    assert served == [
        {
            "service": "featurizer",
            "model": "detector",
            "name": detector["model"],
            "version": detector["version"],
        }
    ]
    [load] = [s for s in families["boig_model_load_seconds"] if s.labels["service"] == "featurizer"]
    assert load.labels["model"] == "detector" and load.value > 0


def test_missing_weights_stop_startup_with_a_clear_error(tmp_path: Path) -> None:
    app = create_app(FeaturizerSettings(detector_weights=tmp_path / "missing.pt"))
    with pytest.raises(ModelUnavailable, match="make models"), TestClient(app):
        pass


async def test_requests_beyond_the_pending_limit_get_503_with_retry_after() -> None:
    settings = FeaturizerSettings(
        detector_backend="none", image_limits=LIMITS, max_pending_requests=1
    )
    app = create_app(settings)
    body = request_body(*[b64(png_bytes(noisy(250, 250)))] * 4)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://featurizer") as http:
            responses = await asyncio.gather(
                *[http.post("/featurize", json=body) for _ in range(4)]
            )
            # Once the burst is over, the service answers again.
            after = await http.post("/featurize", json=body)
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    refused = next(response for response in responses if response.status_code == 503)
    assert_error(refused, 503, "overloaded", "busy")
    assert refused.headers["Retry-After"] == "1"
    assert after.status_code == 200
