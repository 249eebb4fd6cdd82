"""Actionable edits (issue 14): the changes to a creative's description that raise its reward
most, found by a bounded, model-free search and scored with the request's own reward.

Each candidate is one change toward the description the reward compares with (repaint a
colour region, add, remove, move or replace an object, another tone word, the caption),
scored alone on the creative's description; the edits are then chosen greedily by what each
adds to those chosen before, one per part of the creative and of the target, so that they
can all be made together.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from services.common.contracts import (
    TONE_AXES,
    TONE_AXIS,
    ColorSwatch,
    DetectedObject,
    Edit,
    EditKind,
    EditPart,
    Verbalization,
)
from services.common.geometry import Box
from services.scorer.rewards import (
    DEFAULT_COLOR_SCALE,
    Components,
    match_component,
    match_components,
    reward_from_components,
)

MIN_GAIN = 1e-3
"""An edit that raises the reward by less (a thousandth of its range) is noise, not advice."""
MAX_SWATCHES = 6
"""Colours considered on each side, largest first: at most 6 x 6 recolor candidates (the
featurizer's palettes have 6 colours by default)."""
MAX_OBJECTS = 6
"""Objects considered on each side (the creative's most confident, the target's first): at
most 6 removals, 6 additions and 36 moves or replacements."""
MAX_CANDIDATES = MAX_SWATCHES**2 + 2 * MAX_OBJECTS + MAX_OBJECTS**2 + 9 + 1
"""Candidates of one creative at most (with 9 tone words and a caption), each scored by
computing one reward term again; every edit chosen then scores again the candidates left in
its field (at most 2 x 6 + 6 x 6 for objects), whatever the size of the descriptions."""
BACKGROUND_COVERAGE = 0.3
"""The creative's largest colour is called its background when it covers at least this."""
LARGE_AREA, SMALL_AREA = 0.25, 0.02
"""Box areas (fractions of the image) from which an object is called large, up to which small."""

_TIE_ORDER: tuple[EditKind, ...] = (
    "recolor",
    "set_tone",
    "move_object",
    "replace_object",
    "change_caption",
    "remove_object",
    "add_object",
)
"""Between edits of equal gain, changing a part comes before adding or removing one: moving
the creative's circle where the target has one is the better advice than drawing another."""
# Rows top to bottom, columns left to right: (noun, where a thing is) for each ninth of the image.
_PLACES = (
    (("the top-left", "top-left"), ("the top", "at the top"), ("the top-right", "top-right")),
    (("the left", "on the left"), ("the centre", "in the centre"), ("the right", "on the right")),
    (
        ("the bottom-left", "bottom-left"),
        ("the bottom", "at the bottom"),
        ("the bottom-right", "bottom-right"),
    ),
)


@dataclass(frozen=True)
class EditReward:
    """The request's reward of one description, with the weights its batch was scored with:
    an edited description is compared with the creative's total, so it must be on that scale."""

    references: tuple[Verbalization, ...]
    """What the reward compares with: (target,) for match, (high, low) for contrastive."""
    weights: Mapping[str, float]
    """The used weights of the batch (``Reward.weights``), already renormalized."""
    color_scale: float = DEFAULT_COLOR_SCALE

    def __post_init__(self) -> None:
        if len(self.references) not in (1, 2):
            raise ValueError("edits follow one description (match) or two (contrastive)")

    @property
    def toward(self) -> Verbalization:
        """The description edits move toward: the target (match) or the high one."""
        return self.references[0]

    def terms(
        self,
        image: Verbalization,
        *,
        like: Sequence[Components] | None = None,
        changed: str | None = None,
    ) -> list[Components]:
        """The match terms of ``image`` against each reference. Given the terms (``like``) of
        a description that differs from ``image`` in the field ``changed`` only, just that
        field's term is computed again: each term reads only the field of its name."""
        if like is None or changed is None:
            return [
                match_components(image, reference, color_scale=self.color_scale)
                for reference in self.references
            ]
        return [
            {
                **terms,
                changed: match_component(changed, image, reference, color_scale=self.color_scale),
            }
            for terms, reference in zip(like, self.references, strict=True)
        ]

    def total(self, terms: Sequence[Components]) -> float:
        return reward_from_components(terms, self.weights).total

    def __call__(self, image: Verbalization) -> float:
        """The reward ``image`` would get."""
        return self.total(self.terms(image))


@dataclass(frozen=True)
class Suggestions:
    """The edits suggested for one creative, best first, and its reward with all of them made."""

    edits: list[Edit] = field(default_factory=list)
    total_with_edits: float | None = None


@dataclass(frozen=True)
class _Candidate:
    kind: EditKind
    before: EditPart | None
    after: EditPart | None
    summary: str
    touches: frozenset[str]
    """The parts of the creative and of the target it uses: chosen edits share none."""

    @property
    def changed_field(self) -> str:
        part = self.before or self.after
        assert part is not None
        return part.field


def suggest_edits(image: Verbalization, reward: EditReward, *, max_edits: int) -> Suggestions:
    """Up to ``max_edits`` edits of ``image`` that raise ``reward`` by at least MIN_GAIN each,
    largest gain first, no two touching the same part of the creative or of the target.

    Every candidate is scored alone on ``image``: that is the ``reward`` and ``gain`` an edit
    reports. The edits are then chosen greedily by what each adds to those chosen before it,
    so that they fit together (once the square has become the target's star, adding a star
    as well earns nothing); ``total_with_edits`` is the reward with all of them made.
    """
    if max_edits <= 0:
        return Suggestions()
    base_terms = reward.terms(image)
    base = reward.total(base_terms)
    pending: list[_Scored] = []
    for candidate in _candidates(image, reward):
        total = _total_with(candidate, image, base_terms, reward)
        if total is not None and total - base >= MIN_GAIN:
            pending.append(_Scored(candidate, alone=total, marginal=total - base))

    chosen: list[_Scored] = []
    touched: set[str] = set()
    state, state_terms = image, base_terms
    while pending and len(chosen) < max_edits:
        best = min(pending, key=lambda item: (-item.marginal, *_tie_break(item.candidate)))
        if best.marginal < MIN_GAIN:
            break
        changed = best.candidate.changed_field
        state = _apply(state, best.candidate.before, best.candidate.after)
        state_terms = reward.terms(state, like=state_terms, changed=changed)
        state_total = reward.total(state_terms)
        chosen.append(best)
        touched |= best.candidate.touches
        # The reward is a weighted sum of one term per field: only the candidates of the
        # field just changed can now add a different amount than before.
        remaining = []
        for item in pending:
            if item.candidate.touches & touched:
                continue
            if item.candidate.changed_field == changed:
                total = _total_with(item.candidate, state, state_terms, reward)
                if total is None:
                    continue
                item = replace(item, marginal=total - state_total)
            remaining.append(item)
        pending = remaining
    if not chosen:
        return Suggestions()

    chosen.sort(key=lambda item: (-item.alone, *_tie_break(item.candidate)))
    edits = [
        Edit(
            kind=item.candidate.kind,
            summary=item.candidate.summary,
            before=item.candidate.before,
            after=item.candidate.after,
            reward=item.alone,
            gain=item.alone - base,
        )
        for item in chosen
    ]
    return Suggestions(edits=edits, total_with_edits=reward.total(state_terms))


@dataclass(frozen=True)
class _Scored:
    candidate: _Candidate
    alone: float
    """The reward of the creative with this edit alone made."""
    marginal: float
    """What the edit adds to the reward on top of the edits chosen so far."""


def _total_with(
    candidate: _Candidate, image: Verbalization, terms: Sequence[Components], reward: EditReward
) -> float | None:
    """The reward of ``image`` (whose terms are ``terms``) with ``candidate`` made; None when
    the description cannot take it (e.g. a 51st object)."""
    try:
        edited = _apply(image, candidate.before, candidate.after)
    except ValueError:
        return None
    return reward.total(reward.terms(edited, like=terms, changed=candidate.changed_field))


def _tie_break(candidate: _Candidate) -> tuple[int, str]:
    return _TIE_ORDER.index(candidate.kind), candidate.summary


def apply_edit(verbalization: Verbalization, edit: Edit) -> Verbalization:
    """``verbalization`` with ``edit`` made: its ``before`` part becomes its ``after`` part
    (taken away when there is none, added when there was none). ValueError when the
    description has no such part, or cannot hold the result."""
    return _apply(verbalization, edit.before, edit.after)


# --- applying ----------------------------------------------------------------------------


def _apply(
    verbalization: Verbalization, before: EditPart | None, after: EditPart | None
) -> Verbalization:
    part = before or after
    if part is None:
        raise ValueError("an edit needs a part before or after it")
    name = part.field
    fields = {key: getattr(verbalization, key) for key in type(verbalization).model_fields}
    if name == "caption":
        if before is not None and verbalization.caption != before.caption:
            raise ValueError("the description has another caption than the edit changes")
        fields["caption"] = None if after is None else after.caption
    else:
        items = list(fields[name])
        old, new = _value(before), _value(after)
        if old is not None:
            if old not in items:
                raise ValueError(f"the description has no {name} part {old!r}")
            index = items.index(old)
            if new is None:
                del items[index]
            else:
                items[index] = new
        elif new is not None:
            items.append(new)
        fields[name] = items
    # Built anew, not model_copy(update=...): the validators must see the result (one tone
    # per axis, in order; coverages within the image; at most 50 objects).
    return Verbalization(**fields)


def _value(part: EditPart | None) -> ColorSwatch | DetectedObject | str | None:
    if part is None:
        return None
    return part.color or part.object or part.tone or part.caption


# --- proposing ---------------------------------------------------------------------------


def _candidates(image: Verbalization, reward: EditReward) -> Iterator[_Candidate]:
    yield from _recolors(image, reward.toward)
    yield from _object_edits(image, reward.toward)
    yield from _tone_edits(image, reward.references)
    yield from _caption_edits(image, reward.toward)


def _recolors(image: Verbalization, target: Verbalization) -> Iterator[_Candidate]:
    """Repaint one colour region of the creative in a target colour, keeping its coverage."""
    largest = sorted(range(len(image.colors)), key=lambda i: -image.colors[i].coverage)
    largest = largest[:MAX_SWATCHES]
    background = (
        largest[0] if largest and image.colors[largest[0]].coverage >= BACKGROUND_COVERAGE else None
    )
    wanted = list({color.rgb: color for color in target.colors}.values())
    wanted = sorted(wanted, key=lambda color: -color.coverage)[:MAX_SWATCHES]
    for index in largest:
        swatch = image.colors[index]
        for color in wanted:
            if color.rgb == swatch.rgb:
                continue
            after = ColorSwatch(name=color.name, rgb=color.rgb, coverage=swatch.coverage)
            yield _Candidate(
                kind="recolor",
                before=EditPart(color=swatch),
                after=EditPart(color=after),
                summary=_recolor_summary(swatch, after, background=index == background),
                touches=frozenset({f"color:{index}", f"target-color:{color.rgb}"}),
            )


def _object_edits(image: Verbalization, target: Verbalization) -> Iterator[_Candidate]:
    mine = sorted(range(len(image.objects)), key=lambda i: -image.objects[i].confidence)
    mine = mine[:MAX_OBJECTS]
    wanted = list(enumerate(target.objects[:MAX_OBJECTS]))
    for index in mine:
        obj = image.objects[index]
        yield _Candidate(
            kind="remove_object",
            before=EditPart(object=obj),
            after=None,
            summary=f"remove the {obj.label} {_where(obj.box)}",
            touches=frozenset({f"object:{index}"}),
        )
    for target_index, goal in wanted:
        yield _Candidate(
            kind="add_object",
            before=None,
            after=EditPart(object=goal),
            summary=f"add {_a(_size(goal.box) + goal.label)} {_where(goal.box)}",
            touches=frozenset({f"target-object:{target_index}"}),
        )
    for index in mine:
        obj = image.objects[index]
        for target_index, goal in wanted:
            touches = frozenset({f"object:{index}", f"target-object:{target_index}"})
            if obj.label != goal.label:
                yield _Candidate(
                    kind="replace_object",
                    before=EditPart(object=obj),
                    after=EditPart(object=goal),
                    summary=_replace_summary(obj, goal),
                    touches=touches,
                )
            elif obj.box != goal.box:
                moved = DetectedObject(label=obj.label, confidence=obj.confidence, box=goal.box)
                yield _Candidate(
                    kind="move_object",
                    before=EditPart(object=obj),
                    after=EditPart(object=moved),
                    summary=_move_summary(obj, goal),
                    touches=touches,
                )


def _tone_edits(image: Verbalization, references: Sequence[Verbalization]) -> Iterator[_Candidate]:
    """Every other word on each axis a reference names: the reward decides which one helps
    (for contrastive, an axis only the low description names can be worth leaving)."""
    axes = dict.fromkeys(TONE_AXIS[tone] for reference in references for tone in reference.tones)
    current = {TONE_AXIS[tone]: tone for tone in image.tones}
    for axis in axes:
        now = current.get(axis)
        for word in TONE_AXES[axis]:
            if word == now:
                continue
            yield _Candidate(
                kind="set_tone",
                before=None if now is None else EditPart(tone=now),
                after=EditPart(tone=word),
                summary=f"make it {word}" if now is None else f"tone {now} → {word}",
                touches=frozenset({f"tone:{axis}"}),
            )


def _caption_edits(image: Verbalization, target: Verbalization) -> Iterator[_Candidate]:
    # Only a captioned creative: without a caption the reward has no caption term to move.
    if image.caption is None or target.caption is None or image.caption == target.caption:
        return
    yield _Candidate(
        kind="change_caption",
        before=EditPart(caption=image.caption),
        after=EditPart(caption=target.caption),
        summary=f"caption {_quote(image.caption)} → {_quote(target.caption)}",
        touches=frozenset({"caption"}),
    )


# --- words -------------------------------------------------------------------------------


def _recolor_summary(before: ColorSwatch, after: ColorSwatch, *, background: bool) -> str:
    old, new = before.name, after.name
    if old == new:  # "blue → blue" says nothing: name the shades
        old, new = f"{old} {_rgb(before)}", f"{new} {_rgb(after)}"
    region = "background " if background else ""
    return f"{region}{old} → {new} (covers {round(before.coverage * 100)}%)"


def _move_summary(obj: DetectedObject, goal: DetectedObject) -> str:
    source, target = _place(obj.box), _place(goal.box)
    ratio = _area(goal.box) / max(_area(obj.box), 1e-4)
    resize = "enlarge" if ratio >= 1.25 else "shrink" if ratio <= 0.8 else None
    if source != target:
        tail = f" and {resize} it" if resize else ""
        return f"move the {obj.label} from {source[0]} to {target[0]}{tail}"
    if resize:
        return f"{resize} the {obj.label} {source[1]}"
    return f"nudge the {obj.label} {source[1]} into place"


def _replace_summary(obj: DetectedObject, goal: DetectedObject) -> str:
    where = "" if _place(obj.box) == _place(goal.box) else f" {_where(goal.box)}"
    return f"replace the {obj.label} {_where(obj.box)} with {_a(goal.label)}{where}"


def _place(box: Box) -> tuple[str, str]:
    """(noun, where) of the ninth of the image the box's centre lies in."""
    column = min(2, int((box[0] + box[2]) / 2 * 3))
    row = min(2, int((box[1] + box[3]) / 2 * 3))
    return _PLACES[row][column]


def _where(box: Box) -> str:
    return _place(box)[1]


def _size(box: Box) -> str:
    area = _area(box)
    return "large " if area >= LARGE_AREA else "small " if area <= SMALL_AREA else ""


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _a(phrase: str) -> str:
    return f"{'an' if phrase[:1] in set('aeiou') else 'a'} {phrase}"


def _rgb(color: ColorSwatch) -> str:
    return "({},{},{})".format(*color.rgb)


def _quote(text: str, limit: int = 60) -> str:
    return f'"{text if len(text) <= limit else text[: limit - 1] + "…"}"'
