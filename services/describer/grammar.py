"""The description language as a regular expression, for decoding constrained to it.

BoigLLM writes descriptions token by token; constrained to this expression it cannot leave
the format (no invented colour names such as "plumperadio", no RGB channel over 255, no
fifth tone, no box corner past 1), and every token that the format forces (the line keys,
"(", the commas between channels, "0." of a box corner) is known before the model runs, so
a decoder can feed it without a forward pass of its own (jump-forward).

One expression serves both backends: the transformers backend compiles it with llguidance,
vLLM receives it as ``structured_outputs.regex``. It uses only what both regex dialects read
(character classes, groups, alternation, bounded repetition), no look-around or back-refs.

What a regular expression cannot say is left to the repairing parser, which counts it:
colour coverages summing past 100% and box corners out of order (x0 > x1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from services.common.colour_names import BASIC_COLORS
from services.common.contracts import TONE_AXES, DetectedObject
from services.common.verbalization import render_object

MAX_COLORS = 5
"""Most colours on a colors line: the prompts ask for 2 to 5, and the served line is an
average of at most 4 names (history.average_palette). The featurizer reports up to 6 (13% of
the synthetic world's creatives), so a target description is a little coarser than a
featurized one."""
MAX_OBJECTS = 4
"""Most objects on an objects line: what a target look needs (the featurizer reports 0-3
objects on 92% of the synthetic world's 2,000 creatives, 4 on 6%, 5-7 on 2%), few enough
that a model stuck repeating one object stops early: the 100-step BoigLLM writes
"circle 0.99 [0.99,0.99,0.99,0.99]" again and again, ~27 tokens and forward passes each."""
OPTIONAL_FIELDS = frozenset({"objects"})
"""Lines a description may leave out. ``verbalization.render`` writes no line for an empty
field, and of the fields a model writes only objects are ever empty: the featurizer always
reports colours and a warmth tone, while an image may show no object (227 of world v3 seed
0's 1,600 training descriptions have no objects line). A grammar that required the line
would make a model that ends its description there write one it never saw: the 100-step
BoigLLM then repeated "circle 0.99 [0.99,0.99,0.99,0.99]" up to MAX_OBJECTS times."""
CAPTION_CHARACTERS = 160
"""Longest caption, in characters."""

MAX_TOKENS: dict[str, int] = {
    # The longest line the grammar admits, in tokens of a tokenizer that spends one token per
    # digit and per punctuation mark (SmolLM2): a colour is at most ~20 ("slate gray
    # (112,128,144) 100%;"), an object ~30 (label, confidence, four corners), a 160-character
    # caption ~45, four tone words ~15; plus the key. A decode under the grammar cannot run
    # longer, so these budgets never cut a description the grammar would finish.
    "caption": 52,
    "colors": 4 + 20 * MAX_COLORS,
    "tones": 24,
    "objects": 4 + 30 * MAX_OBJECTS,
}

_CHANNEL = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PERCENT = r"(100|[1-9]?[0-9])"
_FRACTION = r"(0\.[0-9][0-9]|1\.00)"
_LABEL = r"[a-z][a-z0-9_-]{0,11}( [a-z0-9_-]{1,12}){0,2}"
"""A detector label (the contracts' ``Name``, at most 38 of its 40 characters): the detector's
vocabulary is the featurizer's to choose (COCO, our shapes), so labels are free words of at
most 12 letters ("refrigerator"), not a list."""


def description_regex(
    fields: Sequence[str],
    *,
    colour_names: Iterable[str] = BASIC_COLORS,
    pinned_rgb: Mapping[str, tuple[int, int, int]] | None = None,
    pinned_objects: Iterable[DetectedObject] = (),
    continues: bool = False,
) -> str:
    """The expression a description with these ``fields`` (in this order, each on its own
    ``key: value`` line, as ``verbalization.render`` writes them) matches in full; the lines
    of ``OPTIONAL_FIELDS`` may be left out. ``pinned_rgb``: colour names whose RGB is given,
    so that a colour of that name can only be written at it: the digits become forced
    tokens, which cost no sampling (the describer pins what the prompt's history line shows,
    where it answers with the history's RGB anyway: ``palette_history_rgb``).
    ``pinned_objects`` (distinct labels): the objects line may name only these, each with
    its given confidence and box (the describer pins the account's typical detections at
    the level: ``object_history_boxes``); the model chooses which, if any.
    ``continues``: the lines continue a description begun before them (a description
    decoded in segments), so each starts with its newline, and where all of them are
    optional the segment may be empty: the model ends the description there."""
    if not fields:
        raise ValueError("a description needs at least one field")
    unknown = [field for field in fields if field not in _FIELD_VALUES]
    if unknown:
        raise ValueError(f"no grammar for the description fields {unknown}")
    names = sorted(set(colour_names), key=lambda name: (-len(name), name))
    values = dict(_FIELD_VALUES, colors=_colors_value(names, pinned_rgb or {}))
    pinned = list(pinned_objects)
    if pinned:
        values["objects"] = _objects_value(pinned)
    lines = [f"{field}: {values[field]}" for field in fields]
    optional = [field in OPTIONAL_FIELDS for field in fields]

    def following(start: int) -> str:
        return "".join(
            rf"(\n{line})?" if skip else rf"\n{line}"
            for line, skip in zip(lines[start:], optional[start:], strict=True)
        )

    if continues:
        return following(0)
    # Without a line before them, the first line written has no newline: one alternative
    # per line that may come first (every line before it optional).
    alternatives = []
    for first, line in enumerate(lines):
        alternatives.append(line + following(first + 1))
        if not optional[first]:
            break
    else:
        alternatives.append("")  # all optional: a description may be empty
    return alternatives[0] if len(alternatives) == 1 else "(" + "|".join(alternatives) + ")"


def max_tokens(fields: Sequence[str]) -> int:
    """Most tokens a description with these lines can take under the grammar (MAX_TOKENS)."""
    return sum(MAX_TOKENS[field] for field in fields)


def _colors_value(names: Sequence[str], pinned: Mapping[str, tuple[int, int, int]]) -> str:
    if not names:
        raise ValueError("the colors grammar needs at least one colour name")
    unknown = sorted(set(pinned) - set(names))
    if unknown:
        raise ValueError(f"pinned colours outside the colour names: {unknown}")
    alternatives = []
    for name in names:  # longest first, as the free names below
        if name in pinned:
            r, g, b = (_channel(value) for value in pinned[name])
            alternatives.append(rf"{re.escape(name)} \({r},{g},{b}\)")
    free = [name for name in names if name not in pinned]
    if free:
        name = "(" + "|".join(re.escape(name) for name in free) + ")"
        alternatives.append(rf"{name} \({_CHANNEL},{_CHANNEL},{_CHANNEL}\)")
    colour = "(" + "|".join(alternatives) + rf") {_PERCENT}%"
    return rf"{colour}(; {colour}){{0,{MAX_COLORS - 1}}}"


def _channel(value: int) -> int:
    if not 0 <= value <= 255:
        raise ValueError(f"an RGB channel is 0-255, not {value}")
    return value


def _tones_value() -> str:
    """One word per axis at most, axes in their fixed order, at least one word: the renderer
    writes tones sorted by axis and the featurizer gives one per axis."""
    axes = [
        "(" + "|".join(re.escape(tone.value) for tone in tones) + ")"
        for tones in TONE_AXES.values()
    ]
    alternatives = []
    for first in range(len(axes)):
        rest = "".join(f"(, {axis})?" for axis in axes[first + 1 :])
        alternatives.append(axes[first] + rest)
    return "(" + "|".join(alternatives) + ")"


def _objects_value(pinned: Sequence[DetectedObject] = ()) -> str:
    if pinned:
        return _pinned_objects_value(pinned)
    box = rf"\[{_FRACTION},{_FRACTION},{_FRACTION},{_FRACTION}\]"
    detected = rf"{_LABEL} {_FRACTION} {box}"
    return rf"{detected}(; {detected}){{0,{MAX_OBJECTS - 1}}}"


def _pinned_objects_value(pinned: Sequence[DetectedObject]) -> str:
    """Any of the pinned objects, one to MAX_OBJECTS times. A repeat can only repeat an
    identical object (the describer merges those: ``merge_repeated_objects``); forbidding
    repeats instead made the greedy model, which tends to go on after an object, add labels
    it would not have chosen (object-label IoU 0.50 -> 0.34 on world v3 seed 0's 60
    evaluation rows)."""
    labels = [obj.label for obj in pinned]
    if len(set(labels)) != len(labels):
        raise ValueError(f"each label is pinned once, not {sorted(labels)}")
    detected = "(" + "|".join(re.escape(render_object(obj)) for obj in pinned) + ")"
    return rf"{detected}(; {detected}){{0,{MAX_OBJECTS - 1}}}"


_FIELD_VALUES: dict[str, str] = {
    # Printable ASCII but the double quote: no character that any parser reads as a line
    # break (\r, \x0b, \x85, \u2028 ...) can smuggle another field in.
    "caption": rf"[A-Za-z0-9][ -!#-~]{{0,{CAPTION_CHARACTERS - 1}}}",
    "colors": "",  # built from the colour names: description_regex
    "tones": _tones_value(),
    "objects": _objects_value(),
}
