"""validation_message: where each problem is, the first few of them, and how many more."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError, model_validator

from services.common.errors import (
    MOST_PROBLEMS_NAMED,
    RateLimited,
    UpstreamError,
    error_from_payload,
    validation_message,
)


class _Inner(BaseModel):
    account: str = Field(pattern=r"^[a-z]+$")


class _Outer(BaseModel):
    context: _Inner
    counts: list[int] = []

    @model_validator(mode="after")
    def _some_counts(self) -> _Outer:
        if not self.counts:
            raise ValueError("give at least one count")
        return self


def _failure(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate(data)
    return caught.value


def test_each_problem_follows_its_location() -> None:
    exc = _failure({"context": {"account": "Has Spaces"}, "counts": [1, "x"]})
    assert validation_message(exc) == (
        "context.account: String should match pattern '^[a-z]+$'; "
        "counts.1: Input should be a valid integer, unable to parse string as an integer"
    )


def test_omitted_parts_leave_the_location() -> None:
    exc = _failure({"context": {"account": "Has Spaces"}, "counts": [1]})
    assert validation_message(exc, omit=("context",)).startswith("account: String should")


def test_a_problem_of_the_whole_object() -> None:
    exc = _failure({"context": {"account": "acme"}})
    assert validation_message(exc) == "body: Value error, give at least one count"
    assert validation_message(exc, whole="row") == "row: Value error, give at least one count"
    assert validation_message(exc, whole=None) == "Value error, give at least one count"


def test_many_problems_are_counted_not_listed() -> None:
    exc = _failure({"context": {"account": "acme"}, "counts": ["x"] * (MOST_PROBLEMS_NAMED + 2)})
    message = validation_message(exc)
    assert message.count("Input should be a valid integer") == MOST_PROBLEMS_NAMED
    assert message.endswith("; and 2 more")
    assert f"counts.{MOST_PROBLEMS_NAMED}:" not in message


def test_an_error_body_becomes_its_typed_error_with_retry_after_and_request_id() -> None:
    body = {"error": {"type": "rate_limited", "message": "slow down", "request_id": "r-1"}}
    error = error_from_payload(body, status_code=429, retry_after=3)
    assert isinstance(error, RateLimited)
    assert (error.message, error.retry_after, error.request_id) == ("slow down", 3, "r-1")
    unknown = {"error": {"type": "brand_new", "message": "m", "request_id": None}}
    rebuilt = error_from_payload(unknown, status_code=500)
    assert isinstance(rebuilt, UpstreamError) and rebuilt.request_id is None
    assert rebuilt.message == "upstream error brand_new: m"
    assert error_from_payload(["not", "an", "error"], status_code=502).request_id is None
