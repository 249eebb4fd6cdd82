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
    detected=st.lists(objects, max_size=MAX_OBJECTS),
)
def test_every_rendered_description_matches(
    colors: list[ColorSwatch], tone_words: list[object], detected: list[DetectedObject]
) -> None:
    verbalization = Verbalization(colors=colors, tones=tone_words, objects=detected)
    assert REGEX.fullmatch(render(verbalization))


@pytest.mark.parametrize(
    "text",
    [
        "colors: plumperadio (1,2,3) 40%\ntones: warm",  # an invented colour name
        "colors: navy (256,0,0) 40%\ntones: warm",  # a channel past 255
        "colors: navy (1,2,3) 101%\ntones: warm",
        "colors: navy (1,2,3) 40%\ntones: dark, warm",  # axes out of order
        "colors: navy (1,2,3) 40%\ntones: warm, cool",  # two words on one axis
        "colors: navy (1,2,3) 40%\ntones: warm\nobjects: star 0.99 [0.99,0.99,1.20,0.99]",
        "colors: navy (1,2,3) 40%\ntones: warm\nobjects: star 0.99 [0.99,0.99,0.99,0.99,0.9]",
        "tones: warm\ncolors: navy (1,2,3) 40%",  # lines out of order
        "colors: navy (1,2,3) 40%\nobjects: star 0.99 [0.1,0.2,0.3,0.4]",  # no tones line
        "colors: navy (1,2,3) 40%\ntones: warm\nobjects: ",  # render writes no empty line
    ],
)
def test_what_a_model_must_not_write_does_not_match(text: str) -> None:
    assert REGEX.fullmatch(text) is None


def test_an_image_without_objects_has_no_objects_line() -> None:
    assert REGEX.fullmatch("colors: navy (1,2,3) 40%\ntones: warm, dark")


def test_continuing_lines_start_with_their_newline_and_optional_ones_may_all_be_absent() -> None:
    rest = re.compile(description_regex(("tones", "objects"), continues=True))
    assert rest.fullmatch("\ntones: warm")
    assert rest.fullmatch("\ntones: warm\nobjects: star 0.99 [0.10,0.20,0.30,0.40]")
    assert rest.fullmatch("tones: warm") is None
    assert rest.fullmatch("") is None  # tones are never left out
    objects = re.compile(description_regex(("objects",), continues=True))
    assert objects.fullmatch("")  # the model may end the description before the line
    assert re.fullmatch(description_regex(("objects",)), "")


def test_a_caption_line_comes_first_where_the_fields_say_so() -> None:
    regex = re.compile(description_regex(("caption", "colors")))
    assert regex.fullmatch("caption: a red shoe on a white floor\ncolors: red (200,20,30) 40%")
    assert regex.fullmatch('caption: a "quoted" shoe\ncolors: red (200,20,30) 40%') is None


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="no grammar"):
        description_regex(("colors", "smell"))
    with pytest.raises(ValueError, match="at least one"):
        description_regex(())


def test_a_pinned_colour_is_written_only_at_its_rgb() -> None:
    regex = re.compile(description_regex(("colors",), pinned_rgb={"navy": (20, 40, 80)}))
    assert regex.fullmatch("colors: navy (20,40,80) 60%; white (250,250,250) 40%")
    assert regex.fullmatch("colors: navy (21,40,80) 60%") is None
    assert regex.fullmatch("colors: white (250,250,250) 40%; navy (20,40,80) 60%")


def test_pinning_a_name_leaves_the_longer_names_that_end_in_it_free() -> None:
    regex = re.compile(description_regex(("colors",), pinned_rgb={"gray": (128, 128, 128)}))
    assert regex.fullmatch("colors: slate gray (112,128,144) 40%")
    assert regex.fullmatch("colors: gray (128,128,128) 40%")
    assert regex.fullmatch("colors: gray (112,128,144) 40%") is None


def test_pinning_needs_a_known_name_and_a_real_channel() -> None:
    with pytest.raises(ValueError, match="outside the colour names"):
        description_regex(("colors",), pinned_rgb={"plumperadio": (1, 2, 3)})
    with pytest.raises(ValueError, match="0-255"):
        description_regex(("colors",), pinned_rgb={"navy": (1, 2, 300)})


STAR = DetectedObject(label="star", confidence=0.74, box=(0.38, 0.45, 0.66, 0.72))
CIRCLE = DetectedObject(label="circle", confidence=0.84, box=(0.34, 0.35, 0.65, 0.66))
SQUARE = DetectedObject(label="square", confidence=0.41, box=(0.6, 0.5, 0.8, 0.68))


def test_pinned_objects_are_written_only_at_their_detection() -> None:
    regex = re.compile(description_regex(("objects",), pinned_objects=(STAR, CIRCLE, SQUARE)))
    star = "star 0.74 [0.38,0.45,0.66,0.72]"
    circle = "circle 0.84 [0.34,0.35,0.65,0.66]"
    square = "square 0.41 [0.60,0.50,0.80,0.68]"
    for line in (star, f"{square}; {star}", f"{star}; {circle}; {star}; {square}"):
        assert regex.fullmatch(f"objects: {line}"), line
    for line in (
        "; ".join([star] * (MAX_OBJECTS + 1)),
        "star 0.74 [0.38,0.45,0.66,0.73]",  # another box
        "triangle 0.80 [0.10,0.10,0.20,0.20]",  # a label not pinned
    ):
        assert regex.fullmatch(f"objects: {line}") is None, line
    # The line stays optional.
    assert re.fullmatch(
        description_regex(("tones", "objects"), pinned_objects=(STAR,)), "tones: warm"
    )


def test_a_label_is_pinned_once() -> None:
    with pytest.raises(ValueError, match="once"):
        description_regex(("objects",), pinned_objects=(STAR, STAR))
