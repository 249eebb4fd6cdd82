"""The text form of a verbalization: a renderer, a strict parser and a repairing parser.

The text form is what BoigLLM reads and writes (design §4)::

    caption: a runner on a city street at dusk
    colors: navy (20,30,90) 41%; white (245,245,245) 30%
    tones: cool, dark, high-contrast, saturated
    objects: person 0.91 [0.10,0.20,0.45,0.95]
    text: "Just do it"

``parse(render(v)) == v`` for every valid ``Verbalization``. ``parse`` refuses anything
off the format; ``repair`` is for model output: it keeps what it can read safely and
lists what it dropped or changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from services.common.contracts import TONE_AXIS, ColorSwatch, DetectedObject, Tone, Verbalization
from services.common.errors import validation_message

FIELD_ORDER = ("caption", "colors", "tones", "objects", "text")

_COLOR = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9 _-]*?) \((?P<rgb>\d{1,3},\d{1,3},\d{1,3})\) (?P<pct>\d{1,3})%$"
)
_OBJECT = re.compile(
    r"^(?P<label>[a-z0-9][a-z0-9 _-]*?) (?P<conf>[01]\.\d\d) "
    r"\[(?P<box>[01]\.\d\d,[01]\.\d\d,[01]\.\d\d,[01]\.\d\d)\]$"
)
# Lenient twins for model output: any spacing, decimal percentages, loose number formats.
_NUMBER = r"\d+(?:\.\d+)?"
_LOOSE_COLOR = re.compile(
    rf"^(?P<name>[A-Za-z][A-Za-z0-9 _-]*?)\s*"
    rf"\(\s*(?P<rgb>{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER})\s*\)"
    rf"\s*(?P<pct>{_NUMBER})\s*%?$"
)
_LOOSE_OBJECT = re.compile(
    rf"^(?P<label>[A-Za-z][A-Za-z0-9 _-]*?)\s+(?P<conf>{_NUMBER})?\s*"
    rf"\[\s*(?P<box>{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER})\s*\]$"
)
# A model that learned labels better than box corners writes "star 0.99 [0.99,0.99,0.99,0.99,0.9"
# or stops at "star 0.99": the label and confidence are readable though the box is not.
_RUNAWAY_OBJECT = re.compile(
    rf"^(?P<label>[A-Za-z][A-Za-z0-9 _-]*?)\s+(?P<conf>{_NUMBER})"
    rf"(?:\s*\[(?P<numbers>[\d.,\s]*)\]?)?$"
)
_KEY_ALIASES = {
    "caption": "caption",
    "colors": "colors",
    "colours": "colors",
    "color": "colors",
    "colour": "colors",
    "palette": "colors",
    "tones": "tones",
    "tone": "tones",
    "objects": "objects",
    "object": "objects",
    "text": "text",
}


class VerbalizationSyntaxError(ValueError):
    """The text is not in the verbalization format."""


def render(verbalization: Verbalization) -> str:
    """Render the canonical text form; empty fields are left out."""
    lines: list[str] = []
    if verbalization.caption is not None:
        lines.append(f"caption: {verbalization.caption}")
    if verbalization.colors:
        lines.append("colors: " + render_colors(verbalization.colors))
    if verbalization.tones:
        lines.append("tones: " + ", ".join(tone.value for tone in verbalization.tones))
    if verbalization.objects:
        lines.append("objects: " + "; ".join(render_object(o) for o in verbalization.objects))
    if verbalization.text is not None:
        lines.append("text: " + _quote(verbalization.text))
    return "\n".join(lines)


def _quote(text: str) -> str:
    # json.dumps escapes the ASCII control characters; these three also break lines.
    quoted = json.dumps(text, ensure_ascii=False)
    return (
        quoted.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    )


def render_colors(colors: list[ColorSwatch]) -> str:
    """A colors line's value: ``navy (20,30,90) 41%; white (245,245,245) 30%``."""
    return "; ".join(_render_color(color) for color in colors)


def read_colors(value: str) -> list[ColorSwatch]:
    """The colours a model wrote on a colors line (its value), read as leniently as
    ``repair`` reads them; what cannot be read is left out."""
    return _repair_colors(value.strip(), [])


def _render_color(color: ColorSwatch) -> str:
    r, g, b = color.rgb
    return f"{color.name} ({r},{g},{b}) {round(color.coverage * 100)}%"


def render_object(obj: DetectedObject) -> str:
    """An objects line's item: ``person 0.91 [0.10,0.20,0.45,0.95]``."""
    box = ",".join(f"{value:.2f}" for value in obj.box)
    return f"{obj.label} {obj.confidence:.2f} [{box}]"


def merge_repeated_objects(verbalization: Verbalization) -> Verbalization:
    """The description with each identical object (label, confidence and box) kept once: two
    detections of one box are one object, and a model held to typical detections repeats
    the one it means rather than stopping (``describer.grammar``)."""
    unique = list(dict.fromkeys(verbalization.objects))
    if len(unique) == len(verbalization.objects):
        return verbalization
    return verbalization.model_copy(update={"objects": unique})


def parse(text: str) -> Verbalization:
    """Parse the canonical text form strictly; any deviation raises VerbalizationSyntaxError."""
    fields: dict[str, Any] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep and line.endswith(":"):
            key, value = line[:-1], ""
        elif not sep:
            raise VerbalizationSyntaxError(f"line {number}: expected 'field: value'")
        if key not in FIELD_ORDER:
            raise VerbalizationSyntaxError(f"line {number}: unknown field {key!r}")
        if key in fields:
            raise VerbalizationSyntaxError(f"line {number}: field {key!r} given twice")
        fields[key] = _parse_field_strict(key, value, number)
    try:
        return Verbalization(**fields)
    except ValidationError as exc:
        raise VerbalizationSyntaxError(validation_message(exc, whole=None)) from exc


def _parse_field_strict(key: str, value: str, number: int) -> Any:
    if key == "caption":
        return value
    if key == "text":
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError as exc:
            raise VerbalizationSyntaxError(f"line {number}: text must be a quoted string") from exc
        if not isinstance(decoded, str):
            raise VerbalizationSyntaxError(f"line {number}: text must be a quoted string")
        return decoded
    items = [item for item in value.split("; " if key != "tones" else ", ")] if value else []
    if key == "tones":
        try:
            return [Tone(item) for item in items]
        except ValueError as exc:
            raise VerbalizationSyntaxError(f"line {number}: {exc}") from exc
    pattern = _COLOR if key == "colors" else _OBJECT
    parsed = []
    for item in items:
        match = pattern.match(item)
        if match is None:
            raise VerbalizationSyntaxError(f"line {number}: cannot read {key[:-1]} {item!r}")
        parsed.append(_color_fields(match) if key == "colors" else _object_fields(match))
    return parsed


def _color_fields(match: re.Match[str]) -> dict[str, Any]:
    rgb = tuple(round(float(part)) for part in match["rgb"].split(","))
    return {"name": match["name"], "rgb": rgb, "coverage": float(match["pct"]) / 100}


def _object_fields(match: re.Match[str]) -> dict[str, Any]:
    box = tuple(float(part) for part in match["box"].split(","))
    conf = match["conf"]
    return {"label": match["label"], "confidence": float(conf) if conf else 1.0, "box": box}


@dataclass
class Repaired:
    """What the repairing parser could read, and what it changed or dropped to get there."""

    verbalization: Verbalization
    repairs: list[str] = field(default_factory=list)


def repair(text: str) -> Repaired:
    """Read model output as leniently as is safe; every change is listed in ``repairs``."""
    repairs: list[str] = []
    fields: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("```"):  # blank lines and markdown fences
            continue
        line = line.lstrip("-*• ").strip()
        key, sep, value = line.partition(":")
        canonical = _KEY_ALIASES.get(key.strip().lower())
        if not sep or canonical is None:
            repairs.append(f"ignored line {_clip(line)!r}")
            continue
        if canonical in fields:
            repairs.append(f"ignored repeated field {canonical!r}")
            continue
        fields[canonical] = _REPAIRERS[canonical](value.strip(), repairs)
    verbalization = Verbalization(**{k: v for k, v in fields.items() if v is not None})
    return Repaired(verbalization=verbalization, repairs=repairs)


def _repair_caption(value: str, repairs: list[str]) -> str | None:
    caption = " ".join(value.split())[:300]
    if caption != value:
        repairs.append("normalized caption whitespace or length")
    return caption or None


def _repair_text(value: str, repairs: list[str]) -> str | None:
    if value.startswith('"'):
        try:
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded[:300] or None
        except json.JSONDecodeError:
            pass
    unquoted = value.strip().strip('"').strip()[:300]
    if unquoted:
        repairs.append("read text without valid quoting")
    return unquoted or None


def _repair_colors(value: str, repairs: list[str]) -> list[ColorSwatch]:
    colors: list[ColorSwatch] = []
    for item in _items(value, ";"):
        match = _LOOSE_COLOR.match(item)
        if match is None:
            repairs.append(f"dropped unreadable color {_clip(item)!r}")
            continue
        values = _color_fields(match)
        values["name"] = " ".join(values["name"].lower().replace("_", " ").split())
        rgb = values["rgb"]
        clipped = tuple(min(255, max(0, channel)) for channel in rgb)
        if clipped != rgb:
            repairs.append(f"clipped rgb of {values['name']!r} to 0-255")
        values["rgb"] = clipped
        if values["coverage"] > 1:
            repairs.append(f"dropped color {values['name']!r}: coverage over 100%")
            continue
        try:
            colors.append(ColorSwatch(**values))
        except ValidationError:
            repairs.append(f"dropped invalid color {_clip(item)!r}")
    colors = colors[:12]
    total = sum(color.coverage for color in colors)
    if total > 1.0 + 0.005 * len(colors):
        repairs.append(f"rescaled color coverages that summed to {round(total * 100)}%")
        colors = [
            color.model_copy(update={"coverage": _floor2(color.coverage / total)})
            for color in colors
        ]
    return colors


def _floor2(value: float) -> float:
    # Floor, not round, so that rescaled coverages never sum past 100% again.
    return int(value * 100) / 100


def _repair_tones(value: str, repairs: list[str]) -> list[Tone]:
    tones: list[Tone] = []
    seen_axes: set[str] = set()
    for item in _items(value, ","):
        word = "-".join(item.lower().split())
        try:
            tone = Tone(word)
        except ValueError:
            repairs.append(f"dropped unknown tone {_clip(item)!r}")
            continue
        axis = TONE_AXIS[tone]
        if axis in seen_axes:
            repairs.append(f"dropped tone {word!r}: {axis} already given")
            continue
        seen_axes.add(axis)
        tones.append(tone)
    return tones


def _repair_objects(value: str, repairs: list[str]) -> list[DetectedObject]:
    objects: list[DetectedObject] = []
    for item in _items(value, ";"):
        match = _LOOSE_OBJECT.match(item)
        values = _object_fields(match) if match is not None else _runaway_object(item, repairs)
        if values is None:
            repairs.append(f"dropped unreadable object {_clip(item)!r}")
            continue
        values["label"] = " ".join(values["label"].lower().split())
        x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in values["box"])
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if box != values["box"]:
            repairs.append(f"clipped or reordered box of {values['label']!r}")
        values["box"] = box
        values["confidence"] = min(1.0, values["confidence"])
        try:
            objects.append(DetectedObject(**values))
        except ValidationError:
            repairs.append(f"dropped invalid object {_clip(item)!r}")
    return objects[:50]


def _runaway_object(item: str, repairs: list[str]) -> dict[str, Any] | None:
    """Label and confidence of an object whose box is malformed: the first four numbers of
    the box where it has them, else the whole image (the label is still a claim worth
    keeping; the box then says nothing about where)."""
    match = _RUNAWAY_OBJECT.match(item)
    if match is None:
        return None
    numbers = [float(n) for n in re.findall(_NUMBER, match.group("numbers") or "")]
    label = match.group("label")
    if len(numbers) >= 4:
        box = (numbers[0], numbers[1], numbers[2], numbers[3])
        repairs.append(f"read the box of {label!r} from its first four numbers")
    else:
        box = (0.0, 0.0, 1.0, 1.0)
        repairs.append(f"unreadable box of {label!r}: the whole image")
    return {"label": label, "confidence": float(match.group("conf")), "box": box}


def _items(value: str, separator: str) -> list[str]:
    return [item.strip().rstrip(".") for item in value.split(separator) if item.strip()]


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_REPAIRERS: dict[str, Callable[[str, list[str]], Any]] = {
    "caption": _repair_caption,
    "colors": _repair_colors,
    "tones": _repair_tones,
    "objects": _repair_objects,
    "text": _repair_text,
}
