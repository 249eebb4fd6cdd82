"""Actionable edits: which changes are suggested, in what order, with what reward and words."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.common.contracts import (
    ColorSwatch,
    Creative,
    DetectedObject,
    Edit,
    EditPart,
    ScoreRequest,
    Tone,
    Verbalization,
)
from services.scorer import edits as edits_module
from services.scorer.edits import (
    MAX_CANDIDATES,
    MAX_OBJECTS,
    MIN_GAIN,
    EditReward,
    apply_edit,
    suggest_edits,
)
from services.scorer.rewards import (
    MatchWeights,
    contrastive_rewards,
    match_component,
    match_rewards,
)

TEAL, GREY, YELLOW, WHITE = (0, 128, 128), (128, 128, 128), (240, 220, 30), (250, 250, 250)


def swatch(name: str, rgb: tuple[int, int, int], coverage: float) -> ColorSwatch:
    return ColorSwatch(name=name, rgb=rgb, coverage=coverage)


def thing(
    label: str, box: tuple[float, float, float, float], confidence: float = 0.9
) -> DetectedObject:
    return DetectedObject(label=label, confidence=confidence, box=box)


TARGET = Verbalization(
    colors=[swatch("teal", TEAL, 0.6), swatch("yellow", YELLOW, 0.2)],
    tones=[Tone.COOL, Tone.BRIGHT],
    objects=[thing("circle", (0.05, 0.05, 0.35, 0.35))],
)
CREATIVE = Verbalization(
    colors=[swatch("grey", GREY, 0.6), swatch("yellow", YELLOW, 0.2), swatch("white", WHITE, 0.2)],
    tones=[Tone.NEUTRAL, Tone.DARK],
    objects=[
        thing("square", (0.6, 0.6, 0.9, 0.9), 0.8),
        thing("circle", (0.4, 0.4, 0.6, 0.6), 0.7),
    ],
)


def match_reward_of(image: Verbalization, target: Verbalization = TARGET) -> EditReward:
    """The reward as the scorer computes it for a batch of this one creative."""
    weights = match_rewards([image], target, MatchWeights())[0].weights
    return EditReward(references=(target,), weights=weights)


def test_the_largest_gain_comes_first_and_every_edit_raises_the_reward() -> None:
    reward = match_reward_of(CREATIVE)
    total = match_rewards([CREATIVE], TARGET, MatchWeights())[0].total
    suggested = suggest_edits(CREATIVE, reward, max_edits=10)
    assert suggested.edits, "a creative this far from its target has something to change"
    top = suggested.edits[0]
    assert (top.kind, top.summary) == ("recolor", "background grey → teal (covers 60%)")
    assert top.before == EditPart(color=swatch("grey", GREY, 0.6))
    assert top.after == EditPart(color=swatch("teal", TEAL, 0.6))
    gains = [edit.gain for edit in suggested.edits]
    assert gains == sorted(gains, reverse=True)
    for edit in suggested.edits:
        assert edit.gain >= MIN_GAIN
        assert edit.reward == pytest.approx(total + edit.gain)
        # The reward an edit carries is the scorer's own reward of the edited description.
        edited = apply_edit(CREATIVE, edit)
        assert edit.reward == pytest.approx(
            match_rewards([edited], TARGET, MatchWeights())[0].total
        )


def test_edits_touch_different_parts_and_can_all_be_made_together() -> None:
    reward = match_reward_of(CREATIVE)
    suggested = suggest_edits(CREATIVE, reward, max_edits=10)
    changed = [edit.before for edit in suggested.edits if edit.before is not None]
    assert len(changed) == len(set(map(repr, changed)))
    # One target colour is painted at most once (grey and white are not both made teal).
    painted = [
        edit.after.color.rgb
        for edit in suggested.edits
        if edit.kind == "recolor" and edit.after and edit.after.color
    ]
    assert len(painted) == len(set(painted))
    combined = CREATIVE
    for edit in suggested.edits:
        combined = apply_edit(combined, edit)
    assert suggested.total_with_edits is not None
    assert suggested.total_with_edits == pytest.approx(reward(combined))
    assert suggested.total_with_edits > suggested.edits[0].reward


def test_max_edits_bounds_the_list_and_keeps_the_best() -> None:
    reward = match_reward_of(CREATIVE)
    every = suggest_edits(CREATIVE, reward, max_edits=10).edits
    assert len(every) > 2
    assert suggest_edits(CREATIVE, reward, max_edits=2).edits == every[:2]
    none = suggest_edits(CREATIVE, reward, max_edits=0)
    assert none.edits == [] and none.total_with_edits is None


def test_a_creative_that_already_matches_gets_no_edits() -> None:
    suggested = suggest_edits(TARGET, match_reward_of(TARGET), max_edits=5)
    assert suggested.edits == [] and suggested.total_with_edits is None


def test_a_term_the_batch_does_not_weigh_suggests_nothing() -> None:
    # Weighted on colours only, as a batch whose target names no tones or objects would be:
    # tone and object differences cannot move the reward, so they are not advice.
    reward = EditReward(references=(TARGET,), weights={"colors": 1.0})
    kinds = {edit.kind for edit in suggest_edits(CREATIVE, reward, max_edits=10).edits}
    assert kinds == {"recolor"}


def test_object_edits_say_what_and_where() -> None:
    target = Verbalization(
        objects=[
            thing("circle", (0.05, 0.05, 0.35, 0.35)),
            thing("star", (0.4, 0.4, 0.6, 0.6)),
            thing("triangle", (0.7, 0.05, 0.95, 0.3)),
        ]
    )
    creative = Verbalization(
        objects=[
            thing("circle", (0.7, 0.7, 0.9, 0.9)),  # the right thing in the wrong place
            thing("square", (0.4, 0.42, 0.6, 0.62)),  # the wrong thing in the star's place
        ]
    )
    suggested = suggest_edits(creative, match_reward_of(creative, target), max_edits=10)
    assert [(edit.kind, edit.summary, round(edit.gain, 3)) for edit in suggested.edits] == [
        ("replace_object", "replace the square in the centre with a star", 0.333),
        ("add_object", "add a triangle top-right", 0.333),
        (
            "move_object",
            "move the circle from the bottom-right to the top-left and enlarge it",
            0.167,
        ),
    ]


def test_the_edits_fit_together() -> None:
    # Alone, adding a star gains as much as turning the square into one, and adding a circle
    # as much as moving the creative's; but three additions leave two objects too many. The
    # edits are chosen by what each adds to the ones before, so all of them together reach 1.
    target = Verbalization(
        objects=[
            thing("circle", (0.05, 0.05, 0.35, 0.35)),
            thing("star", (0.4, 0.4, 0.6, 0.6)),
            thing("triangle", (0.7, 0.05, 0.95, 0.3)),
        ]
    )
    creative = Verbalization(
        objects=[thing("circle", (0.7, 0.7, 0.9, 0.9)), thing("square", (0.4, 0.42, 0.6, 0.62))]
    )
    reward = match_reward_of(creative, target)
    suggested = suggest_edits(creative, reward, max_edits=10)
    assert "add_object" not in {edit.kind for edit in suggested.edits if "star" in edit.summary}
    assert suggested.total_with_edits == pytest.approx(1.0)
    assert [edit.summary for edit in suggest_edits(creative, reward, max_edits=1).edits] == [
        "replace the square in the centre with a star"
    ]


def test_extra_objects_are_removed_and_missing_ones_added() -> None:
    target = Verbalization(objects=[thing("circle", (0.05, 0.05, 0.35, 0.35))])
    creative = Verbalization(
        objects=[thing("circle", (0.05, 0.05, 0.35, 0.35)), thing("square", (0.7, 0.7, 0.95, 0.95))]
    )
    top = suggest_edits(creative, match_reward_of(creative, target), max_edits=3).edits
    assert [(e.kind, e.summary) for e in top] == [
        ("remove_object", "remove the square bottom-right")
    ]
    assert top[0].reward == pytest.approx(1.0)
    empty = Verbalization(colors=[swatch("grey", GREY, 1.0)])
    added = suggest_edits(empty, match_reward_of(empty, target), max_edits=3).edits
    assert [e.summary for e in added] == ["add a circle top-left"]
    big = Verbalization(objects=[thing("star", (0.3, 0.3, 0.9, 0.9))])
    added = suggest_edits(empty, match_reward_of(empty, big), max_edits=3).edits
    assert [e.summary for e in added] == ["add a large star in the centre"]


def test_tone_and_colour_words() -> None:
    target = Verbalization(
        colors=[swatch("blue", (40, 60, 200), 1.0)], tones=[Tone.BRIGHT, Tone.WARM]
    )
    creative = Verbalization(colors=[swatch("blue", (20, 30, 90), 1.0)], tones=[Tone.DARK])
    summaries = [
        e.summary
        for e in suggest_edits(creative, match_reward_of(creative, target), max_edits=5).edits
    ]
    assert "background blue (20,30,90) → blue (40,60,200) (covers 100%)" in summaries
    assert "tone dark → bright" in summaries
    assert "make it warm" in summaries


def test_contrastive_edits_follow_high_and_leave_low() -> None:
    high = Verbalization(
        colors=[swatch("teal", TEAL, 1.0)], objects=[thing("circle", (0.1, 0.1, 0.4, 0.4))]
    )
    low = Verbalization(
        colors=[swatch("grey", GREY, 1.0)], objects=[thing("square", (0.6, 0.6, 0.9, 0.9))]
    )
    creative = Verbalization(
        colors=[swatch("grey", GREY, 0.7), swatch("teal", TEAL, 0.3)],
        objects=[thing("square", (0.6, 0.6, 0.9, 0.9))],
    )
    batch = contrastive_rewards([creative], high, low, MatchWeights())[0]
    reward = EditReward(references=(high, low), weights=batch.weights)
    suggested = suggest_edits(creative, reward, max_edits=5)
    # The square is what the low description has and the circle what the high one has.
    assert [(edit.kind, edit.summary) for edit in suggested.edits] == [
        ("replace_object", "replace the square bottom-right with a circle top-left"),
        ("recolor", "background grey → teal (covers 70%)"),
    ]
    for edit in suggested.edits:
        edited = apply_edit(creative, edit)
        expected = contrastive_rewards([edited], high, low, MatchWeights())[0].total
        assert edit.reward == pytest.approx(expected)
        assert edit.gain == pytest.approx(edit.reward - batch.total)
    assert suggested.total_with_edits is not None
    assert suggested.total_with_edits > max(edit.reward for edit in suggested.edits)


def test_captions_change_only_where_both_have_one() -> None:
    target = Verbalization(caption="a runner at dusk", colors=[swatch("teal", TEAL, 1.0)])
    captioned = Verbalization(caption="a cup of coffee", colors=[swatch("teal", TEAL, 1.0)])
    reward = EditReward(references=(target,), weights={"colors": 0.5, "caption": 0.5})
    edits = suggest_edits(captioned, reward, max_edits=3).edits
    assert [(e.kind, e.summary) for e in edits] == [
        ("change_caption", 'caption "a cup of coffee" → "a runner at dusk"')
    ]
    assert edits[0].reward == pytest.approx(1.0)


def test_the_search_is_bounded_however_large_the_descriptions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    colors = [swatch(f"c{i}", (i * 20, 255 - i * 20, (i * 50) % 256), 0.08) for i in range(12)]
    boxes = [(i / 50, 0.0, i / 50 + 0.02, 0.5) for i in range(50)]
    crowded = Verbalization(colors=colors, objects=[thing("square", box) for box in boxes])
    target = Verbalization(
        colors=list(reversed(colors)),
        tones=[Tone.WARM, Tone.BRIGHT, Tone.HIGH_CONTRAST, Tone.SATURATED],
        objects=[thing("circle", box) for box in boxes],
    )
    calls = 0

    def counting(*args: Any, **kwargs: Any) -> float | None:
        nonlocal calls
        calls += 1
        return match_component(*args, **kwargs)

    monkeypatch.setattr(edits_module, "match_component", counting)
    suggested = suggest_edits(crowded, match_reward_of(crowded, target), max_edits=10)
    # Every candidate once, then the candidates left in each chosen edit's field again.
    bound = MAX_CANDIDATES + len(suggested.edits) * (2 * MAX_OBJECTS + MAX_OBJECTS**2)
    assert 0 < calls <= bound
    assert 0 < len(suggested.edits) <= 10


def test_apply_edit_refuses_a_part_the_description_does_not_have() -> None:
    edit = Edit(
        kind="remove_object",
        summary="remove the star",
        before=EditPart(object=thing("star", (0.1, 0.1, 0.2, 0.2))),
        after=None,
        reward=0.5,
        gain=0.1,
    )
    with pytest.raises(ValueError, match="no objects part"):
        apply_edit(CREATIVE, edit)


def test_edit_contracts_refuse_what_makes_no_sense() -> None:
    part = EditPart(tone=Tone.DARK)
    with pytest.raises(ValidationError, match="exactly one"):
        EditPart(tone=Tone.DARK, caption="x")
    with pytest.raises(ValidationError, match="exactly one"):
        EditPart()
    with pytest.raises(ValidationError, match="same field"):
        Edit(
            kind="set_tone",
            summary="s",
            before=part,
            after=EditPart(caption="x"),
            reward=1,
            gain=0.1,
        )
    with pytest.raises(ValidationError, match="must change"):
        Edit(kind="set_tone", summary="s", before=part, after=part, reward=1, gain=0.1)
    with pytest.raises(ValidationError, match="greater than 0"):
        Edit(kind="set_tone", summary="s", before=None, after=part, reward=1, gain=0.0)


def score_request(**fields: object) -> ScoreRequest:
    return ScoreRequest.model_validate(
        {
            "context": {"account": "acme"},
            "creatives": [Creative(id="a", data=b"png")],
            **fields,
        }
    )


def test_edits_are_opt_in_bounded_and_not_for_the_likelihood_reward() -> None:
    assert score_request().max_edits == 0
    assert score_request(max_edits=10, reward="contrastive").max_edits == 10
    with pytest.raises(ValidationError, match="less than or equal to 10"):
        score_request(max_edits=11)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        score_request(max_edits=-1)
    with pytest.raises(ValidationError, match="likelihood reward compares with no target"):
        score_request(max_edits=3, reward="likelihood")
    assert score_request(reward="likelihood").max_edits == 0
