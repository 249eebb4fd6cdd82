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
from collections.abc import Iterable, Sequence

from services.common.colour_names import BASIC_COLORS
from services.common.contracts import TONE_AXES

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
    fields: Sequence[str], *, colour_names: Iterable[str] = BASIC_COLORS, more: bool = False
) -> str:
    """The expression a description with exactly these ``fields`` (in this order, each on its
    own ``key: value`` line, as ``verbalization.render`` writes them) matches in full.
    ``more``: further lines follow, so the last one ends in its newline (a segment of a
    description decoded in parts must be able to end its line where the model ends it)."""
    if not fields:
        raise ValueError("a description needs at least one field")
    unknown = [field for field in fields if field not in _FIELD_VALUES]
    if unknown:
        raise ValueError(f"no grammar for the description fields {unknown}")
    names = sorted(set(colour_names), key=lambda name: (-len(name), name))
    values = dict(_FIELD_VALUES, colors=_colors_value(names))
    lines = r"\n".join(f"{field}: {values[field]}" for field in fields)
    return lines + r"\n" if more else lines


def max_tokens(fields: Sequence[str]) -> int:
    """Most tokens a description with these lines can take under the grammar (MAX_TOKENS)."""
    return sum(MAX_TOKENS[field] for field in fields)


def _colors_value(names: Sequence[str]) -> str:
    if not names:
        raise ValueError("the colors grammar needs at least one colour name")
    name = "(" + "|".join(re.escape(name) for name in names) + ")"
    colour = rf"{name} \({_CHANNEL},{_CHANNEL},{_CHANNEL}\) {_PERCENT}%"
    return rf"{colour}(; {colour}){{0,{MAX_COLORS - 1}}}"


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


def _objects_value() -> str:
    box = rf"\[{_FRACTION},{_FRACTION},{_FRACTION},{_FRACTION}\]"
    detected = rf"{_LABEL} {_FRACTION} {box}"
    # An image may show no object: the line is then empty, as the featurizer's would be.
    return rf"({detected}(; {detected}){{0,{MAX_OBJECTS - 1}}})?"


_FIELD_VALUES: dict[str, str] = {
    # Printable ASCII but the double quote: no character that any parser reads as a line
    # break (\r, \x0b, \x85, \u2028 ...) can smuggle another field in.
    "caption": rf"[A-Za-z0-9][ -!#-~]{{0,{CAPTION_CHARACTERS - 1}}}",
    "colors": "",  # built from the colour names: description_regex
    "tones": _tones_value(),
    "objects": _objects_value(),
}
