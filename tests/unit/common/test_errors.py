"""validation_message: where each problem is, the first few of them, and how many more."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError, model_validator

from services.common.errors import MOST_PROBLEMS_NAMED, validation_message


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
