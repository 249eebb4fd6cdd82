"""Image-carrying contracts in JSON (base64) and MessagePack (raw bytes), and their refusals."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common import wire
from services.common.contracts import Context, Creative, FeaturizeRequest, ImageInput, ScoreRequest
from services.common.errors import InvalidInput, UnsupportedMediaType

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def score_request(data: bytes = PNG) -> ScoreRequest:
    return ScoreRequest(
        context=Context(account="acme", posted_at=datetime(2026, 5, 1, 12, tzinfo=UTC)),
        creatives=[Creative(id="a", data=data), Creative(id="b", data=data[::-1])],
    )


def test_json_carries_base64_under_the_public_field_name() -> None:
    body = score_request().model_dump_json()
    assert f'"image_base64":"{base64.b64encode(PNG).decode()}"' in body
    assert wire.parse_body(ScoreRequest, body.encode(), "application/json") == score_request()


def test_msgpack_carries_the_file_itself() -> None:
    body = wire.pack(score_request())
    assert PNG in body  # raw, not base64
    assert len(body) < len(score_request().model_dump_json())
    assert wire.parse_body(ScoreRequest, body, "application/msgpack") == score_request()


@given(st.binary(min_size=1, max_size=2048))
def test_any_file_survives_both_forms(data: bytes) -> None:
    image = ImageInput(id="x", data=data)
    request = FeaturizeRequest(images=[image])
    assert FeaturizeRequest.model_validate_json(request.model_dump_json()) == request
    assert wire.parse_body(FeaturizeRequest, wire.pack(request), wire.MSGPACK) == request


def test_a_data_url_is_read_as_its_base64() -> None:
    text = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert Creative.model_validate({"id": "a", "image_base64": text}).data == PNG


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not*base64!", "creatives.0.image_base64: Value error, not valid base64"),
        ("QUJD\\nREVG", "creatives.0.image_base64: Value error, not valid base64"),
        ("QUJ", "creatives.0.image_base64: Value error, not valid base64"),
        ("", "creatives.0.image_base64: Value error, the image is empty"),
    ],
    ids=["alphabet", "line-break", "padding", "empty"],
)
def test_malformed_base64_is_a_422_naming_the_field(text: str, message: str) -> None:
    body = (
        f'{{"context": {{"account": "a"}}, "creatives": [{{"id": "a", "image_base64": "{text}"}}]}}'
    )
    with pytest.raises(InvalidInput) as caught:
        wire.parse_body(ScoreRequest, body.encode(), "application/json; charset=utf-8")
    assert caught.value.status_code == 422
    assert caught.value.message.startswith(message)


def test_non_canonical_but_valid_base64_is_still_read() -> None:
    # "QR==" has non-zero padding bits: the fast check re-encodes to "QQ==", the strict
    # decoder accepts it, as b64decode(validate=True) always did.
    assert Creative.model_validate({"id": "a", "image_base64": "QR=="}).data == b"A"


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a byte MessagePack never uses
        b"\x92\x01",  # an array cut short
        msgpack.packb({"context": {"account": "a"}, "creatives": [msgpack.ExtType(1, b"x")]}),
        msgpack.packb([1, 2, 3]),  # not a map
    ],
    ids=["reserved-byte", "truncated", "extension-type", "not-a-map"],
)
def test_malformed_msgpack_is_a_422(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        wire.parse_body(ScoreRequest, body, wire.MSGPACK)


def test_other_content_types_are_a_415() -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        wire.parse_body(ScoreRequest, b"<xml/>", "application/xml")
    assert caught.value.status_code == 415
    assert "application/json or application/msgpack" in caught.value.message


def test_no_content_type_means_json() -> None:
    body = score_request().model_dump_json().encode()
    assert wire.parse_body(ScoreRequest, body, None) == score_request()


@given(st.text(alphabet="AQZaz09+/=!-_ \n", max_size=16))
def test_base64_is_read_exactly_as_the_strict_decoder_reads_it(text: str) -> None:
    # The fast path (decode, then check the length) must accept and refuse what
    # b64decode(validate=True) does, and decode it the same.
    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except ValueError:
        expected = None
    try:
        data: bytes | None = ImageInput.model_validate({"image_base64": text}).data
    except ValidationError as exc:
        assert "not valid base64" in str(exc) or (expected == b"" and "empty" in str(exc))
        data = None
    assert data == (expected or None)
