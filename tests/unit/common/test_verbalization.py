"""The description language: render/parse round-trip, strictness, and repairs of model output."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.contracts import TONE_AXES, ColorSwatch, DetectedObject, Tone, Verbalization
from services.common.verbalization import (
    VerbalizationSyntaxError,
    merge_repeated_objects,
    parse,
    render,
    repair,
)

EXAMPLE = """\
caption: a runner on a city street at dusk
colors: navy (20,30,90) 41%; white (245,245,245) 30%; orange (240,120,20) 12%
tones: cool, dark, high-contrast, saturated
objects: person 0.91 [0.10,0.20,0.45,0.95]; car 0.62 [0.50,0.55,0.80,0.90]
text: "Just do it\""""

names = st.from_regex(r"[a-z][a-z0-9]{0,8}( [a-z]{1,6}){0,2}", fullmatch=True)
fractions = st.floats(min_value=0, max_value=1, allow_nan=False)
# Any text at all: the model canonicalizes whitespace, line breaks and control characters.
one_line = st.text(min_size=1, max_size=60).filter(lambda s: s.split() != [])


@st.composite
def verbalizations(draw: st.DrawFn) -> Verbalization:
    count = draw(st.integers(min_value=0, max_value=6))
    budget = 100  # percent left to hand out, so coverages never exceed the image
    colors = []
    for _ in range(count):
        percent = draw(st.integers(min_value=0, max_value=budget))
        budget -= percent
        # Jitter below the rounding step: the model must quantize it away.
        coverage = max(0.0, percent / 100 + draw(st.floats(min_value=-0.004, max_value=0.004)))
        rgb = draw(st.tuples(*[st.integers(0, 255)] * 3))
        colors.append(ColorSwatch(name=draw(names), rgb=rgb, coverage=min(1.0, coverage)))
    tones = [draw(st.sampled_from(axis)) for axis in TONE_AXES.values() if draw(st.booleans())]
    objects = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        x0, x1 = sorted(round(v, 2) for v in (draw(fractions), draw(fractions)))
        y0, y1 = sorted(round(v, 2) for v in (draw(fractions), draw(fractions)))
        objects.append(
            DetectedObject(label=draw(names), confidence=draw(fractions), box=(x0, y0, x1, y1))
        )
    return Verbalization(
        caption=draw(st.none() | one_line),
        colors=colors,
        tones=tones,
        objects=objects,
        text=draw(st.none() | st.text(min_size=1, max_size=80)),
    )


@given(verbalizations())
def test_parse_inverts_render(verbalization: Verbalization) -> None:
    assert parse(render(verbalization)) == verbalization


@given(verbalizations())
def test_repair_reads_canonical_text_without_changes(verbalization: Verbalization) -> None:
    repaired = repair(render(verbalization))
    assert repaired.verbalization == verbalization
    assert repaired.repairs == []


def test_design_example_parses_exactly() -> None:
    parsed = parse(EXAMPLE)
    assert parsed.colors[0] == ColorSwatch(name="navy", rgb=(20, 30, 90), coverage=0.41)
    assert parsed.tones == [Tone.COOL, Tone.DARK, Tone.HIGH_CONTRAST, Tone.SATURATED]
    assert parsed.objects[1].box == (0.5, 0.55, 0.8, 0.9)
    assert parsed.text == "Just do it"
    assert render(parsed) == EXAMPLE


def test_values_are_quantized_to_what_the_text_carries() -> None:
    swatch = ColorSwatch(name="red", rgb=(255, 0, 0), coverage=0.4149)
    assert swatch.coverage == 0.41


def test_captions_are_kept_on_one_line() -> None:
    v = Verbalization(caption="  a runner\non a\x1fcity\u2028street  ")
    assert v.caption == "a runner on a city street"
    assert render(v) == "caption: a runner on a city street"


def test_tones_come_out_in_axis_order() -> None:
    v = Verbalization(tones=[Tone.MUTED, Tone.WARM])
    assert v.tones == [Tone.WARM, Tone.MUTED]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colours: red (255,0,0) 10%", "unknown field"),
        ("colors: red (255,0,0) 10%\ncolors: blue (0,0,255) 5%", "given twice"),
        ("colors: red (255,0,0)", "cannot read color"),
        ("colors: red (256,0,0) 10%", "less than or equal to 255"),
        ("colors: red (255,0,0) 70%; blue (0,0,255) 70%", "more than the whole image"),
        ("tones: warm, cool", "one tone word per axis"),
        ("tones: shiny", "shiny"),
        ("objects: dog 0.90 [0.50,0.50,0.20,0.90]", "x0 <= x1"),
        ("text: unquoted", "quoted string"),
        ("just some words", "field: value"),
    ],
)
def test_strict_parser_refuses_deviations(text: str, message: str) -> None:
    with pytest.raises(VerbalizationSyntaxError, match=message):
        parse(text)


def test_repair_keeps_what_is_safe_and_lists_every_change() -> None:
    model_output = """```
Colours: Navy (20, 30, 300) 60%; red (1,2,3) 70%; blurple
Tones: cool, Dark, warm, shiny
objects: dog [0.5,0.5,0.2,0.9]; cat 0.8
note: ignore me
```"""
    repaired = repair(model_output)
    v = repaired.verbalization
    assert [c.name for c in v.colors] == ["navy", "red"]
    assert v.colors[0].rgb == (20, 30, 255)
    assert sum(c.coverage for c in v.colors) <= 1.0
    assert v.tones == [Tone.COOL, Tone.DARK]
    assert v.objects == [
        DetectedObject(label="dog", confidence=1.0, box=(0.2, 0.5, 0.5, 0.9)),
        # A label with its confidence but no box is kept, located nowhere in particular.
        DetectedObject(label="cat", confidence=0.8, box=(0.0, 0.0, 1.0, 1.0)),
    ]
    joined = "\n".join(repaired.repairs)
    for expected in (
        "clipped rgb",
        "rescaled",
        "blurple",
        "warm",
        "shiny",
        "reordered box",
        "cat",
        "note",
    ):
        assert expected in joined


def test_repair_of_garbage_gives_an_empty_description_and_says_why() -> None:
    repaired = repair("I am sorry, I cannot help with that.")
    assert repaired.verbalization == Verbalization()
    assert repaired.repairs


def test_repair_keeps_the_label_of_an_object_whose_box_runs_on() -> None:
    repaired = repair(
        "colors: gold (248,210,30) 90%\n"
        "objects: star 0.99 [0.10,0.20,0.30,0.40,0.99,0.9; circle 0.80 [0.5,0.5; square 0.7; none"
    )
    star, circle, square = repaired.verbalization.objects
    assert (square.label, square.confidence, square.box) == ("square", 0.7, (0, 0, 1, 1))
    assert (star.label, star.confidence, star.box) == ("star", 0.99, (0.1, 0.2, 0.3, 0.4))
    assert (circle.label, circle.box) == ("circle", (0.0, 0.0, 1.0, 1.0))
    assert any("first four numbers" in r for r in repaired.repairs)
    assert any("whole image" in r for r in repaired.repairs)
    assert any("unreadable object 'none'" in r for r in repaired.repairs)  # no confidence: text


def test_repeated_identical_objects_are_merged_and_nothing_else_changes() -> None:
    star = DetectedObject(label="star", confidence=0.74, box=(0.38, 0.45, 0.66, 0.72))
    other_star = star.model_copy(update={"box": (0.1, 0.1, 0.2, 0.2)})
    look = Verbalization(tones=[Tone.WARM], objects=[star, other_star, star, star])
    assert merge_repeated_objects(look) == Verbalization(
        tones=[Tone.WARM], objects=[star, other_star]
    )
    assert merge_repeated_objects(look.model_copy(update={"objects": [star]})).objects == [star]
