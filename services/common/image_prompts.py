"""A description -> a Stable Diffusion prompt (and the low-KPI look -> a negative prompt).
Pure and deterministic: the same description always gives the same prompt. The generator
prompts with BoigLLM's target description; the trainer captions the world SD's training
images with their featurized descriptions, so serving prompts are in-distribution.

CLIP reads at most 75 prompt tokens, so phrases go most important first and whatever does
not fit is dropped whole, never cut mid-word.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from services.common.contracts import ColorSwatch, Context, DetectedObject, Verbalization

TokenCounter = Callable[[str], int]
"""Tokens a text takes in the text encoder, without its start and end tokens."""

CLIP_PROMPT_TOKENS = 75
"""CLIP's 77 positions less the start and end tokens."""

SUBJECT_TOKENS = 40
"""At most this much of the budget goes to the caption, so the look still fits after it."""

MAX_OBJECTS = 5
MAX_ACCENT_COLORS = 3
MOSTLY_COVERAGE = 0.5
"""A dominant colour covering at least this fraction is 'mostly' the background."""
MIN_ACCENT_COVERAGE = 0.05
SMALL_AREA = 0.05
LARGE_AREA = 0.25

_PRETOKEN = re.compile(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]")
_VOWELS = frozenset("aeiou")
_ROWS = ("top", "middle", "bottom")
_COLUMNS = ("left", "centre", "right")


def estimate_clip_tokens(text: str) -> int:
    """A cautious count of CLIP BPE tokens, for when no tokenizer is at hand.

    CLIP's vocabulary holds most English words up to ~10 letters whole; this counts one token
    per 6 letters, one per digit and symbol, and two per non-ASCII character (its UTF-8 bytes
    become separate symbols), so it overestimates ordinary prompts.
    """
    count = 0
    for piece in _PRETOKEN.findall(text):
        if piece.isascii() and piece.isalpha():
            count += 1 + (len(piece) - 1) // 6
        else:
            count += 1 if piece.isascii() else 2
    return count


def render_prompt(
    description: Verbalization,
    context: Context,
    *,
    count_tokens: TokenCounter = estimate_clip_tokens,
    max_tokens: int = CLIP_PROMPT_TOKENS,
) -> str:
    """The target description as a comma-separated prompt, most important first: the caption
    (else the post text), the objects where they stand, the colours, the tones, the keywords.

    Text written on the image is left out: SD 1.x draws letters as noise, so overlays are the
    renderer's job, not the prompt's.
    """
    subject = description.caption or " ".join(context.text.split())
    phrases = [
        *_object_phrases(description.objects),
        *_color_phrases(description.colors),
        *_tone_phrases(description),
        *_unique(" ".join(keyword.split()) for keyword in context.keywords),
    ]
    return _fit(subject, phrases, count_tokens, max_tokens)


def render_negative_prompt(
    low: Verbalization,
    *,
    target: Verbalization | None = None,
    count_tokens: TokenCounter = estimate_clip_tokens,
    max_tokens: int = CLIP_PROMPT_TOKENS,
) -> str:
    """The look of the low-KPI description (colours, tones, objects) as a negative prompt;
    empty when it describes nothing.

    With ``target``, colour names, tones and object labels the target also has are left out:
    the same word in both prompts would only cancel itself.
    """
    shared = Verbalization() if target is None else target
    shared_colors = {color.name for color in shared.colors}
    shared_labels = {obj.label for obj in shared.objects}
    colors = [color for color in _merged_colors(low.colors) if color.name not in shared_colors]
    phrases = [
        *_color_phrases(colors),
        *(tone.value for tone in low.tones if tone not in shared.tones),
        *_unique(obj.label for obj in by_prominence(low.objects) if obj.label not in shared_labels)[
            :MAX_OBJECTS
        ],
    ]
    return _fit("", phrases, count_tokens, max_tokens)


# --- phrases ----------------------------------------------------------------------------


def object_position(obj: DetectedObject) -> str:
    """Where the box centre falls in a 3x3 grid: 'top left', 'middle right', 'centre', ..."""
    x0, y0, x1, y1 = obj.box
    row = _ROWS[_third((y0 + y1) / 2)]
    column = _COLUMNS[_third((x0 + x1) / 2)]
    if (row, column) == ("middle", "centre"):
        return "centre"
    return f"{row} {column}"


def object_size(obj: DetectedObject) -> str | None:
    """'small' or 'large' by the box's share of the image; None in between."""
    x0, y0, x1, y1 = obj.box
    area = (x1 - x0) * (y1 - y0)
    if area < SMALL_AREA:
        return "small"
    if area >= LARGE_AREA:
        return "large"
    return None


def _object_phrases(objects: Iterable[DetectedObject]) -> list[str]:
    phrases = []
    for obj in by_prominence(objects):
        size = object_size(obj)
        noun = f"{size} {obj.label}" if size else obj.label
        position = object_position(obj)
        where = "in the centre" if position == "centre" else f"at {position}"
        phrases.append(f"{_article(noun)} {noun} {where}")
    return _unique(phrases)[:MAX_OBJECTS]


def _color_phrases(colors: Iterable[ColorSwatch]) -> list[str]:
    merged = _merged_colors(colors)
    if not merged:
        return []
    dominant, *others = merged
    background = f"{dominant.name} background"
    phrases = [f"mostly {background}" if dominant.coverage >= MOSTLY_COVERAGE else background]
    accents = [c.name for c in others if c.coverage >= MIN_ACCENT_COVERAGE][:MAX_ACCENT_COLORS]
    if accents:
        phrases.append("accents of " + _and_list(accents))
    return phrases


def _tone_phrases(description: Verbalization) -> list[str]:
    if not description.tones:
        return []
    return [" ".join(tone.value for tone in description.tones) + " tones"]


def _merged_colors(colors: Iterable[ColorSwatch]) -> list[ColorSwatch]:
    """Swatches of one name summed (the palette may split a colour into shades), largest
    first; equal coverages keep the description's order."""
    totals: dict[str, float] = {}
    first: dict[str, ColorSwatch] = {}
    for color in colors:
        totals[color.name] = totals.get(color.name, 0.0) + color.coverage
        first.setdefault(color.name, color)
    ranked = sorted(totals, key=lambda name: -totals[name])
    return [
        ColorSwatch(name=name, rgb=first[name].rgb, coverage=min(1.0, totals[name]))
        for name in ranked
    ]


def by_prominence(objects: Iterable[DetectedObject]) -> list[DetectedObject]:
    """Largest box first, then the more confident; ties keep the description's order."""

    def prominence(obj: DetectedObject) -> tuple[float, float]:
        x0, y0, x1, y1 = obj.box
        return (-(x1 - x0) * (y1 - y0), -obj.confidence)

    return sorted(objects, key=prominence)


# --- assembly ---------------------------------------------------------------------------


def _fit(subject: str, phrases: list[str], count_tokens: TokenCounter, max_tokens: int) -> str:
    """Join ``subject`` and ``phrases`` with commas within ``max_tokens``: the subject cut at a
    word boundary to its share, then each phrase in order if it still fits."""
    parts: list[str] = []
    if subject:
        words = subject.split()
        limit = min(SUBJECT_TOKENS, max_tokens)
        while words and count_tokens(" ".join(words)) > limit:
            words.pop()
        if words:
            parts.append(" ".join(words))
    for phrase in phrases:
        if count_tokens(", ".join([*parts, phrase])) <= max_tokens:
            parts.append(phrase)
    return ", ".join(parts)


def _third(value: float) -> int:
    return 0 if value < 1 / 3 else 2 if value > 2 / 3 else 1


def _article(noun: str) -> str:
    return "an" if noun[:1] in _VOWELS else "a"


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for item in items:
        key = item.lower()
        if item and key not in seen:
            seen.add(key)
            result.append(item)
    return result
