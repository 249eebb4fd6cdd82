"""What POST /v1/feedback accepts (the FeedbackRequest contract) and the list's page cursors."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.contracts import MAX_KPI_VALUE, FeedbackFilter, FeedbackRequest
from services.common.errors import InvalidInput
from services.gateway.cursors import decode_cursor, encode_cursor
from services.gateway.feedback import CURSOR_PREFIX

IMAGE = base64.b64encode(b"\x89PNG not checked here").decode()
CONTEXT = {"account": "acme", "text": "summer sale", "posted_at": "2024-05-01T12:00:00Z"}


def parse(**fields: Any) -> FeedbackRequest:
    return FeedbackRequest.model_validate({"kpi_name": "likes", "kpi_value": 120, **fields})


def refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as refused:
        parse(**fields)
    return str(refused.value)


def test_a_generated_image_by_id_needs_no_context() -> None:
    request = parse(image_id="0123abcd-1")
    assert (request.image_id, request.image, request.context) == ("0123abcd-1", None, None)
    assert request.correction is False


def test_an_image_comes_with_its_context_and_post_time() -> None:
    request = parse(image_base64=IMAGE, context=CONTEXT)
    assert request.image == base64.b64decode(IMAGE)
    assert request.context is not None and request.context.posted_at is not None
    assert request.context.posted_at.tzinfo is not None
    assert "context: required with image_base64" in refusal(image_base64=IMAGE)
    no_time = {"account": "acme"}
    assert "context.posted_at: required" in refusal(image_base64=IMAGE, context=no_time)
    assert "context.posted_at: required" in refusal(image_id="a-1", context=no_time)


def test_exactly_one_way_to_name_the_creative() -> None:
    assert "send image_id" in refusal(context=CONTEXT)
    assert "not both" in refusal(image_id="a-1", image_base64=IMAGE, context=CONTEXT)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"kpi_value": -1}, "greater than or equal to 0"),
        ({"kpi_value": float("nan")}, "finite number"),
        ({"kpi_value": float("inf")}, "finite number"),
        ({"kpi_value": MAX_KPI_VALUE * 10}, "less than or equal to"),
        ({"kpi_value": "many"}, "valid number"),
        ({"kpi_name": "Likes"}, "should match pattern"),
        ({"kpi_name": "a" * 33}, "should match pattern"),
        ({"kpi_name": "likes; drop table"}, "should match pattern"),
        ({"image_id": "../etc/passwd"}, "should match pattern"),
        ({"image_base64": "not base64!"}, "not valid base64"),
        ({"image_base64": ""}, "the image is empty"),
        ({"reward": "match"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_refused_with_a_reason(fields: dict[str, Any], says: str) -> None:
    base: dict[str, Any] = {"image_id": "a-1"}
    if "image_base64" in fields:
        base = {"context": CONTEXT}
    assert says in refusal(**{**base, **fields})


def test_a_kpi_value_may_be_zero_or_fractional() -> None:
    assert parse(image_id="a-1", kpi_value=0).kpi_value == 0.0
    assert parse(image_id="a-1", kpi_name="ctr", kpi_value=0.034).kpi_value == 0.034


def test_the_list_filter_is_bounded() -> None:
    assert FeedbackFilter().limit == 50
    for bad in ({"limit": 0}, {"limit": 201}, {"account": "a b"}, {"creative_sha256": "ab"}):
        with pytest.raises(ValidationError):
            FeedbackFilter.model_validate(bad)
    with pytest.raises(ValidationError, match="Extra inputs"):
        FeedbackFilter.model_validate({"acount": "acme"})


def test_cursors_round_trip_and_strangers_are_refused() -> None:
    for seq in (1, 42, 10**15):
        cursor = encode_cursor(seq, prefix=CURSOR_PREFIX)
        assert cursor.isascii() and "=" not in cursor
        assert decode_cursor(cursor, prefix=CURSOR_PREFIX) == seq
    for bad in (
        "",
        "42",
        "!!!",
        encode_cursor(1, prefix=CURSOR_PREFIX)[:-1] + "*",
        "ZjE6LTE",
        "eDox",
    ):
        with pytest.raises(InvalidInput, match="cursor"):
            decode_cursor(bad, prefix=CURSOR_PREFIX)
