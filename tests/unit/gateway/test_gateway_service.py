"""Turning multipart uploads into the ScoreRequest contract: ids, sizes, the request part."""

from __future__ import annotations

import json

import pytest

from services.common.contracts import ScoreRequest
from services.common.errors import InvalidInput, PayloadTooLarge
from services.common.settings import ImageLimits
from services.gateway.service import (
    UploadedCreative,
    build_score_request,
    creative_id_from_filename,
)

SPEC = json.dumps({"context": {"account": "acme"}, "target": {"level": "high"}, "reward": "match"})


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("summer-ad.png", "summer-ad"),
        ("photo.final.jpeg", "photo.final"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ann\\Banner 01 (copy).webp", "Banner_01_copy"),
        ("été à la plage.png", "t_la_plage"),
        ("noext", "noext"),
        (".png", "png"),
        ("***.png", "creative-1"),
        ("", "creative-1"),
        (None, "creative-1"),
        ("x" * 300 + ".png", "x" * 100),
    ],
)
def test_ids_are_sanitized_file_stems(filename: str | None, expected: str) -> None:
    creative_id = creative_id_from_filename(filename, set(), 0)
    assert creative_id == expected
    ScoreRequest.model_validate(  # the id satisfies the contract's ImageId pattern
        {"context": {"account": "a"}, "creatives": [{"id": creative_id, "image_base64": "eA=="}]}
    )


def test_ids_are_made_unique_in_order() -> None:
    taken: set[str] = set()
    names = ["ad.png", "ad.jpg", "ad.webp", "ad-2.png"]
    ids = [creative_id_from_filename(name, taken, index) for index, name in enumerate(names)]
    assert ids == ["ad", "ad-2", "ad-3", "ad-2-2"]


def test_build_score_request_encodes_the_files() -> None:
    uploads = [
        UploadedCreative(filename="a.png", data=b"\x89PNG..."),
        UploadedCreative(filename="b.png", data=b"jpeg"),
    ]
    request = build_score_request(SPEC, uploads, limits=ImageLimits())
    assert [c.id for c in request.creatives] == ["a", "b"]
    assert request.creatives[0].data == b"\x89PNG..."
    assert request.context.account == "acme" and request.reward == "match"


def test_build_score_request_carries_the_edits_asked_for() -> None:
    upload = [UploadedCreative(filename="a.png", data=b"data")]
    spec = json.dumps({"context": {"account": "acme"}, "max_edits": 3})
    assert build_score_request(spec, upload, limits=ImageLimits()).max_edits == 3
    assert build_score_request(SPEC, upload, limits=ImageLimits()).max_edits == 0
    with pytest.raises(InvalidInput, match="max_edits"):
        spec = json.dumps({"context": {"account": "acme"}, "max_edits": 11})
        build_score_request(spec, upload, limits=ImageLimits())
    with pytest.raises(InvalidInput, match="likelihood"):
        spec = json.dumps({"context": {"account": "a"}, "reward": "likelihood", "max_edits": 1})
        build_score_request(spec, upload, limits=ImageLimits())


def test_build_score_request_refuses_bad_parts() -> None:
    upload = [UploadedCreative(filename="a.png", data=b"data")]
    with pytest.raises(InvalidInput, match="'request' part"):
        build_score_request("{not json", upload, limits=ImageLimits())
    with pytest.raises(InvalidInput, match=r"target\.level"):
        spec = json.dumps({"context": {"account": "acme"}, "target": {"level": "viral"}})
        build_score_request(spec, upload, limits=ImageLimits())
    with pytest.raises(InvalidInput, match="creatives"):
        spec = json.dumps({"context": {"account": "acme"}, "creatives": []})
        build_score_request(spec, upload, limits=ImageLimits())
    with pytest.raises(InvalidInput, match="at least one"):
        build_score_request(SPEC, [], limits=ImageLimits())
    with pytest.raises(InvalidInput, match="'a' is empty"):
        build_score_request(
            SPEC, [UploadedCreative(filename="a.png", data=b"")], limits=ImageLimits()
        )
    with pytest.raises(PayloadTooLarge, match="'big'"):
        big = [UploadedCreative(filename="big.png", data=b"x" * 11)]
        build_score_request(SPEC, big, limits=ImageLimits(max_bytes=10))
