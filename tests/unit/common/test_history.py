"""The retrieval summary: an account's past look at a level, as counts and one prompt line."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.contracts import ColorSwatch, DetectedObject, KpiLevel, Tone, Verbalization
from services.common.history import (
    HistoryStore,
    LevelTally,
    average_palette,
    line_palette,
    with_history_rgb,
)

HIGH = KpiLevel.HIGH


def look(
    colors: list[tuple[str, tuple[int, int, int], float]],
    tones: list[Tone] = (),  # type: ignore[assignment]
    objects: list[str] = (),  # type: ignore[assignment]
) -> Verbalization:
    return Verbalization(
        colors=[ColorSwatch(name=n, rgb=rgb, coverage=c) for n, rgb, c in colors],
        tones=list(tones),
        objects=[
            DetectedObject(label=label, confidence=0.9, box=(0, 0, 1, 1)) for label in objects
        ],
    )


POSTS = [
    look([("navy", (20, 40, 80), 0.6), ("white", (250, 250, 250), 0.3)], [Tone.COOL], ["star"]),
    look([("navy", (40, 60, 100), 0.2), ("white", (240, 240, 240), 0.7)], [Tone.COOL], []),
    look([("navy", (30, 50, 90), 0.5), ("gold", (220, 180, 40), 0.4)], [Tone.WARM], ["star"]),
    look([("gold", (230, 190, 50), 0.8)], [Tone.COOL, Tone.BRIGHT], ["circle"]),
]


def store() -> HistoryStore:
    return HistoryStore.from_looks(("acme", "likes", HIGH, post) for post in POSTS)


def test_summary_ranks_colours_by_mean_share_and_weights_rgb_by_coverage() -> None:
    summary = store().summary("acme", "likes", HIGH)
    assert summary is not None
    assert summary.posts == 4
    # Mean share over the 4 posts (0 where a post lacks the colour): navy 1.3/4, gold 1.2/4,
    # white 1.0/4; the largest colour of most posts (navy, white, navy, gold) is not the rule.
    assert [color.name for color in summary.colors] == ["navy", "gold", "white"]
    assert [color.share for color in summary.colors] == pytest.approx([0.325, 0.3, 0.25])
    # navy: (20*.6 + 40*.2 + 30*.5) / 1.3 = 26.9 -> 27 for red.
    assert summary.colors[0].rgb == (27, 47, 87)
    # Tones: the majority word of an axis that at least half of the posts name.
    assert summary.tones == ["cool"]  # bright: 1 of 4 posts, below half
    # Objects in at least a quarter of the posts, most common first.
    assert summary.objects == ["star", "circle"]


def test_line_spells_colours_as_the_description_does() -> None:
    summary = store().summary("acme", "likes", HIGH)
    assert summary is not None
    assert summary.line() == (
        "history at this level: colors navy (27,47,87) 32%, gold (227,187,47) 30%, "
        "white (243,243,243) 25%; tones cool; objects star, circle"
    )
    assert summary.line(HIGH).startswith("history at high level: colors navy")
    # No post count: leaving a training row out of its level would make that level the one
    # whose count is one short, a give-away of the answer.
    assert "4" not in summary.line().split("colors")[0]


def test_leaving_a_post_out_equals_never_counting_it() -> None:
    full = store()
    for index, post in enumerate(POSTS):
        others = HistoryStore.from_looks(
            ("acme", "likes", HIGH, p) for i, p in enumerate(POSTS) if i != index
        )
        assert full.line("acme", "likes", HIGH, leave_out=post) == others.line(
            "acme", "likes", HIGH
        )
    # The store itself is unchanged by a leave-one-out read.
    assert full.tallies["acme", "likes", HIGH].posts == 4


def test_unknown_account_or_level_has_no_line() -> None:
    assert store().line("nobody", "likes", HIGH) is None
    assert store().line("acme", "likes", KpiLevel.LOW) is None
    assert LevelTally().summary() is None


def test_a_fresh_ingest_replaces_an_accounts_history_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    other = HistoryStore.from_looks([("beta", "likes", HIGH, POSTS[0])])
    newer = HistoryStore.from_looks([("acme", "likes", KpiLevel.LOW, POSTS[3])])
    merged = store().merge(other).merge(newer)
    assert merged.accounts() == {"acme", "beta"}
    assert merged.level_posts("acme", "likes") == {KpiLevel.LOW: 1, KpiLevel.MEDIUM: 0, HIGH: 0}
    path = merged.write(tmp_path / "history" / "history.json")
    assert HistoryStore.read(path).to_json() == merged.to_json()


def test_line_names_at_most_four_colours_and_reads_files_with_dominant_counts() -> None:
    many = [look([(f"c{i}", (i, i, i), 0.1 + i / 100) for i in range(6)])]
    summary = HistoryStore.from_looks(("acme", "likes", HIGH, p) for p in many).summary(
        "acme", "likes", HIGH
    )
    assert summary is not None
    assert [color.name for color in summary.colors] == ["c5", "c4", "c3", "c2"]
    # A store written before colours were ranked by share also holds "dominant" counts.
    data = store().to_json()
    data["accounts"]["acme"]["likes"]["high"]["dominant"] = {"navy": 2}
    assert HistoryStore.from_json(data).line("acme", "likes", HIGH) == store().line(
        "acme", "likes", HIGH
    )


def test_average_palette_is_the_mean_share_per_colour_name() -> None:
    navy = ColorSwatch(name="navy", rgb=(20, 30, 90), coverage=0.9)
    dust = ColorSwatch(name="lime", rgb=(0, 255, 0), coverage=0.01)

    palette = average_palette(
        [
            [navy],
            [navy.model_copy(update={"coverage": 0.5}), dust],
            [navy.model_copy(update={"coverage": 0.7})],
        ]
    )

    # lime's mean share (0.0033) rounds to no share at all and is left out.
    assert palette == [ColorSwatch(name="navy", rgb=(20, 30, 90), coverage=0.7)]
    assert average_palette([]) == []
    assert average_palette([[], []]) == []


def test_line_palette_reads_back_the_colours_a_line_shows() -> None:
    summary = store().summary("acme", "likes", HIGH)
    assert summary is not None
    expected = [(c.name, c.rgb, round(c.share * 100) / 100) for c in summary.colors]  # as spelled
    for line in (summary.line(), summary.line(HIGH)):
        assert [(c.name, c.rgb, c.coverage) for c in line_palette(line)] == expected
    assert line_palette("history at this level: colors none; tones mixed; objects none") == []
    assert line_palette("colors: navy (20,40,80) 60%") == []  # a description, not a line


def test_with_history_rgb_replaces_only_the_colours_the_history_names() -> None:
    palette = [
        ColorSwatch(name="navy", rgb=(90, 90, 90), coverage=0.5),
        ColorSwatch(name="red", rgb=(200, 20, 30), coverage=0.3),
    ]
    history = [ColorSwatch(name="navy", rgb=(20, 40, 80), coverage=0.9)]
    grounded = with_history_rgb(palette, history)
    assert [(c.name, c.rgb, c.coverage) for c in grounded] == [
        ("navy", (20, 40, 80), 0.5),
        ("red", (200, 20, 30), 0.3),
    ]
    assert with_history_rgb(palette, []) == palette


def test_typical_objects_are_each_labels_mean_detection_commonest_first(tmp_path: Path) -> None:
    def shapes(*objects: tuple[str, float, tuple[float, float, float, float]]) -> Verbalization:
        return Verbalization(
            objects=[DetectedObject(label=name, confidence=c, box=b) for name, c, b in objects]
        )

    posts = [
        shapes(("circle", 0.6, (0.5, 0.5, 0.9, 0.9))),
        shapes(("star", 0.9, (0.1, 0.1, 0.3, 0.3)), ("star", 0.8, (0.2, 0.2, 0.4, 0.4))),
        shapes(("star", 0.7, (0.3, 0.3, 0.5, 0.55))),
    ]
    full = HistoryStore.from_looks(("acme", "likes", HIGH, post) for post in posts)
    summary = full.summary("acme", "likes", HIGH)
    assert summary is not None
    # Two posts show a star (three stars in all), one a circle.
    assert list(summary.typical_objects) == ["star", "circle"]
    star = summary.typical_objects["star"]
    assert (star.confidence, star.box) == (0.8, (0.2, 0.2, 0.4, 0.42))
    # Leaving a post out takes its objects out of the means; a store round-trips them.
    left = full.summary("acme", "likes", HIGH, leave_out=posts[0])
    assert left is not None and list(left.typical_objects) == ["star"]
    path = full.write(tmp_path / "history.json")
    assert HistoryStore.read(path).summary("acme", "likes", HIGH) == summary


def test_a_file_written_before_typical_objects_reads_as_none() -> None:
    data = store().to_json()
    data["format"] = 1
    del data["accounts"]["acme"]["likes"]["high"]["object_sums"]
    old = HistoryStore.from_json(data)
    assert old.format == 1  # what the trainer's backfill rebuilds
    summary = old.summary("acme", "likes", HIGH)
    assert summary is not None and summary.typical_objects == {}
    assert summary.line() == store().line("acme", "likes", HIGH)


def test_a_merged_or_rewritten_older_store_keeps_its_format(tmp_path: Path) -> None:
    data = store().to_json()
    data["format"] = 1
    older = HistoryStore.from_json(data)
    fresh = HistoryStore.from_looks([("beta", "likes", HIGH, POSTS[0])])
    assert fresh.format == 2
    # acme's tallies still lack object sums: the merged store must not claim format 2.
    merged = older.merge(fresh)
    assert merged.format == 1
    assert HistoryStore.read(merged.write(tmp_path / "history.json")).format == 1
    assert fresh.merge(HistoryStore()).format == 2
