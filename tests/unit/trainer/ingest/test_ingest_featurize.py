"""Featurization: batched, resumable across runs, keyed by featurizer version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from services.common import wire
from services.common.clients import FeaturizerClient
from services.common.contracts import ColorSwatch, FeaturizeRequest, Verbalization
from services.common.errors import UpstreamError
from services.trainer.ingest.featurize import FeatureCache, HttpFeaturizer, featurize_images


@pytest.fixture
def images(tmp_path: Path, draw_image) -> dict[str, Path]:
    paths = [draw_image(tmp_path / f"{i}.png", (i * 20, 0, 0)) for i in range(5)]
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths}


async def test_restarted_run_featurizes_only_new_images(
    tmp_path: Path, images, featurizer, draw_image
) -> None:
    cache_path = tmp_path / "cache.jsonl"
    first = await featurize_images(
        images,
        featurizer,
        FeatureCache(cache_path, featurizer.version),
        batch_size=2,
        progress=False,
    )
    assert featurizer.featurized == 5
    assert [len(call) for call in featurizer.calls] == [2, 2, 1]

    extra = draw_image(tmp_path / "new.png", (0, 255, 0))
    grown = {**images, hashlib.sha256(extra.read_bytes()).hexdigest(): extra}
    featurizer.calls.clear()
    second = await featurize_images(
        grown, featurizer, FeatureCache(cache_path, featurizer.version), progress=False
    )
    assert featurizer.featurized == 1
    assert set(second) == set(grown)
    assert all(second[digest] == first[digest] for digest in images)


async def test_torn_last_line_is_redone(tmp_path: Path, images, featurizer) -> None:
    cache_path = tmp_path / "cache.jsonl"
    await featurize_images(
        images, featurizer, FeatureCache(cache_path, featurizer.version), progress=False
    )
    lines = cache_path.read_text().splitlines()
    cache_path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # killed mid-write
    featurizer.calls.clear()
    await featurize_images(
        images, featurizer, FeatureCache(cache_path, featurizer.version), progress=False
    )
    assert featurizer.featurized == 1


async def test_a_new_featurizer_version_featurizes_again(
    tmp_path: Path, images, featurizer
) -> None:
    cache_path = tmp_path / "cache.jsonl"
    await featurize_images(
        images, featurizer, FeatureCache(cache_path, featurizer.version), progress=False
    )
    newer = type(featurizer)(version="fake-2")
    await featurize_images(images, newer, FeatureCache(cache_path, "fake-2"), progress=False)
    assert newer.featurized == 5
    versions = {json.loads(line)["featurizer_version"] for line in cache_path.open()}
    assert versions == {"fake-1", "fake-2"}
    with pytest.raises(ValueError, match="cache is for featurizer fake-1"):
        await featurize_images(images, newer, FeatureCache(cache_path, "fake-1"))


def _featurizer_transport(answer_version: str = "1.0.0") -> httpx.MockTransport:
    verbalization = Verbalization(colors=[ColorSwatch(name="red", rgb=(255, 0, 0), coverage=1)])

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            detector = {"backend": "ultralytics", "loaded": True, "model": "yolo", "version": "ab"}
            return httpx.Response(
                200, json={"status": "ok", "version": "1.0.0", "detector": detector}
            )
        content_type = request.headers["content-type"]
        images = wire.parse_body(FeaturizeRequest, request.content, content_type).images
        results = [
            {
                "id": image.id,
                "width": 1,
                "height": 1,
                "verbalization": verbalization.model_dump(mode="json"),
            }
            for image in images
        ]
        return httpx.Response(
            200, json={"results": results, "featurizer_version": answer_version, "detector": None}
        )

    return httpx.MockTransport(handle)


async def test_http_featurizer_version_includes_the_detector(images) -> None:
    async with FeaturizerClient("http://featurizer", transport=_featurizer_transport()) as client:
        featurizer = await HttpFeaturizer.connect(client)
        assert featurizer.version == "1.0.0+yolo@ab"
        cache = FeatureCache(next(iter(images.values())).parent / "c.jsonl", featurizer.version)
        result = await featurize_images(images, featurizer, cache, progress=False)
    assert {v.colors[0].name for v in result.values()} == {"red"}


async def test_http_featurizer_refuses_a_version_change_mid_run(images) -> None:
    transport = _featurizer_transport(answer_version="1.1.0")
    async with FeaturizerClient("http://featurizer", transport=transport) as client:
        featurizer = await HttpFeaturizer.connect(client)
        cache = FeatureCache(next(iter(images.values())).parent / "c.jsonl", featurizer.version)
        with pytest.raises(UpstreamError, match="version changed"):
            await featurize_images(images, featurizer, cache, progress=False)
    assert len(cache) == 0
