"""The description language as a regular expression: every description the renderer writes
from the featurizer's vocabulary matches it, and what a model must not write does not."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.colour_names import BASIC_COLORS
from services.common.contracts import TONE_AXES, ColorSwatch, DetectedObject, Verbalization
from services.common.verbalization import render
from services.describer.grammar import MAX_COLORS, MAX_OBJECTS, description_regex

FIELDS = ("colors", "tones", "objects")
REGEX = re.compile(description_regex(FIELDS))

fractions = st.integers(0, 100).map(lambda hundredths: hundredths / 100)


@st.composite
def boxes(draw: st.DrawFn) -> tuple[float, float, float, float]:
    x0, x1 = sorted((draw(fractions), draw(fractions)))
    y0, y1 = sorted((draw(fractions), draw(fractions)))
    return (x0, y0, x1, y1)


swatches = st.builds(
    ColorSwatch,
    name=st.sampled_from(sorted(BASIC_COLORS)),
    rgb=st.tuples(*(st.integers(0, 255),) * 3),
    coverage=st.integers(1, 20).map(lambda pct: pct / 100),
)
objects = st.builds(
    DetectedObject,
    label=st.sampled_from(["person", "circle", "cell phone", "traffic light", "star"]),
    confidence=fractions,
    box=boxes(),
)
tones = st.tuples(*(st.sampled_from(list(axis)) for axis in TONE_AXES.values())).flatmap(
    lambda words: st.lists(st.sampled_from(words), min_size=1, max_size=4, unique=True)
)


@given(
    colors=st.lists(swatches, min_size=1, max_size=MAX_COLORS),
    tone_words=tones,
    detected=st.lists(objects, min_size=1, max_size=MAX_OBJECTS),
)
def test_every_rendered_description_matches(
    colors: list[ColorSwatch], tone_words: list[object], detected: list[DetectedObject]
) -> None:
    verbalization = Verbalization(colors=colors, tones=tone_words, objects=detected)
    assert REGEX.fullmatch(render(verbalization))


@pytest.mark.parametrize(
    "text",
    [
        "colors: plumperadio (1,2,3) 40%\ntones: warm\nobjects: ",  # an invented colour name
        "colors: navy (256,0,0) 40%\ntones: warm\nobjects: ",  # a channel past 255
        "colors: navy (1,2,3) 101%\ntones: warm\nobjects: ",
        "colors: navy (1,2,3) 40%\ntones: dark, warm\nobjects: ",  # axes out of order
        "colors: navy (1,2,3) 40%\ntones: warm, cool\nobjects: ",  # two words on one axis
        "colors: navy (1,2,3) 40%\ntones: warm\nobjects: star 0.99 [0.99,0.99,1.20,0.99]",
        "colors: navy (1,2,3) 40%\ntones: warm\nobjects: star 0.99 [0.99,0.99,0.99,0.99,0.9]",
        "tones: warm\ncolors: navy (1,2,3) 40%\nobjects: ",  # lines out of order
        "colors: navy (1,2,3) 40%\ntones: warm",  # a line missing
    ],
)
def test_what_a_model_must_not_write_does_not_match(text: str) -> None:
    assert REGEX.fullmatch(text) is None


def test_an_image_without_objects_has_an_empty_objects_line() -> None:
    assert REGEX.fullmatch("colors: navy (1,2,3) 40%\ntones: warm, dark\nobjects: ")


def test_a_caption_line_comes_first_where_the_fields_say_so() -> None:
    regex = re.compile(description_regex(("caption", "colors")))
    assert regex.fullmatch("caption: a red shoe on a white floor\ncolors: red (200,20,30) 40%")
    assert regex.fullmatch('caption: a "quoted" shoe\ncolors: red (200,20,30) 40%') is None


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="no grammar"):
        description_regex(("colors", "smell"))
    with pytest.raises(ValueError, match="at least one"):
        description_regex(())
