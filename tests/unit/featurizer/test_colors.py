"""Palettes: exact on drawn images, plausible on photos, named from the basic colour table."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image, ImageDraw
from skimage import data

from services.common.contracts import ColorSwatch
from services.featurizer.colors import (
    ANALYSIS_SIDE,
    BASIC_COLORS,
    extract_palette,
    extract_palettes,
    nearest_color_name,
    sample_colors,
)

RGB = tuple[int, int, int]


def painted(
    size: tuple[int, int], regions: list[tuple[tuple[int, int, int, int], RGB]]
) -> Image.Image:
    """Black canvas with each ``(box, rgb)`` pasted in turn."""
    image = Image.new("RGB", size, (0, 0, 0))
    for box, rgb in regions:
        image.paste(rgb, box)
    return image


def palette_of(image: Image.Image, **options: Any) -> list[tuple[str, RGB, float]]:
    return [(c.name, c.rgb, c.coverage) for c in extract_palette(sample_colors(image), **options)]


def test_half_red_half_blue_is_exact() -> None:
    image = painted(
        (200, 100), [((0, 0, 100, 100), (255, 0, 0)), ((100, 0, 200, 100), (0, 0, 255))]
    )
    # Equal coverage: ties are ordered by colour, so blue (0,0,255) comes first.
    assert palette_of(image) == [("blue", (0, 0, 255), 0.5), ("red", (255, 0, 0), 0.5)]


def test_three_flat_colours_keep_exact_rgb_and_coverage() -> None:
    assert ANALYSIS_SIDE >= 80  # not resampled: coverages are exact
    image = painted(
        (80, 50),
        [
            ((0, 0, 80, 50), (255, 255, 255)),
            ((0, 0, 80, 15), (20, 30, 90)),
            ((0, 15, 8, 50), (255, 140, 0)),
        ],
    )
    assert palette_of(image) == [
        ("white", (255, 255, 255), 0.63),
        ("navy", (20, 30, 90), 0.30),
        ("orange", (255, 140, 0), 0.07),
    ]


def test_large_image_is_sampled_without_inventing_colours() -> None:
    # Thin stripes in a big image: any blending filter would create greys.
    image = Image.new("RGB", (1200, 800), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for x in range(0, 1200, 6):
        draw.rectangle((x, 0, x + 2, 799), fill=(0, 0, 0))
    palette = palette_of(image)
    assert {rgb for _, rgb, _ in palette} == {(0, 0, 0), (255, 255, 255)}
    assert sum(coverage for *_, coverage in palette) == pytest.approx(1.0)
    assert all(abs(coverage - 0.5) <= 0.02 for *_, coverage in palette)


def test_coverage_of_a_sampled_image_stays_close_to_the_truth() -> None:
    image = painted(
        (997, 613), [((0, 0, 997, 613), (0, 128, 128)), ((0, 0, 250, 613), (255, 215, 0))]
    )
    palette = dict((name, coverage) for name, _, coverage in palette_of(image))
    assert palette["gold"] == pytest.approx(250 / 997, abs=0.01)
    assert palette["teal"] == pytest.approx(747 / 997, abs=0.01)


def test_close_colours_merge_and_report_the_rounded_member_mean() -> None:
    image = painted((100, 100), [((0, 0, 50, 100), (200, 0, 0)), ((50, 0, 100, 100), (210, 3, 1))])
    # Means 205, 1.5 and 0.5: halves round up, not to even.
    assert palette_of(image) == [("red", (205, 2, 1), 1.0)]
    assert len(palette_of(image, merge_delta_e=0.0)) == 2


def test_small_colours_are_dropped_below_min_coverage() -> None:
    image = painted(
        (100, 100), [((0, 0, 100, 100), (255, 255, 255)), ((0, 0, 10, 10), (255, 0, 0))]
    )
    assert [name for name, *_ in palette_of(image, min_coverage=0.02)] == ["white"]
    assert [name for name, *_ in palette_of(image, min_coverage=0.005)] == ["white", "red"]
    assert palette_of(image, min_coverage=0.995) == []


def test_max_colors_bounds_the_palette_and_coverage_stays_whole() -> None:
    stripes = [((i * 10, 0, i * 10 + 10, 80), rgb) for i, rgb in enumerate(BASIC_COLORS.values())]
    image = painted((10 * len(stripes), 80), stripes)
    palette = palette_of(image, max_colors=4)
    assert len(palette) == 4
    assert sum(coverage for *_, coverage in palette) == pytest.approx(1.0)
    coverages = [coverage for *_, coverage in palette]
    assert coverages == sorted(coverages, reverse=True)


def test_any_image_mode_is_accepted() -> None:
    gray = Image.new("L", (40, 40), 128)
    assert palette_of(gray) == [("gray", (128, 128, 128), 1.0)]
    rgba = Image.new("RGBA", (40, 40), (0, 160, 0, 255))
    assert palette_of(rgba) == [("green", (0, 160, 0), 1.0)]


def test_tiny_image_works() -> None:
    assert palette_of(Image.new("RGB", (1, 1), (255, 192, 203))) == [("pink", (255, 192, 203), 1.0)]


@pytest.mark.parametrize("name", list(BASIC_COLORS))
def test_every_table_colour_names_itself_and_is_a_valid_name(name: str) -> None:
    assert nearest_color_name(BASIC_COLORS[name]) == name
    ColorSwatch(name=name, rgb=BASIC_COLORS[name], coverage=1.0)


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((250, 5, 5), "red"),
        ((20, 30, 90), "navy"),
        ((245, 245, 245), "white"),
        ((10, 10, 10), "black"),
        ((120, 60, 20), "brown"),
        ((240, 120, 20), "orange"),
        ((30, 90, 200), "royal blue"),
        ((100, 100, 100), "gray"),
    ],
)
def test_off_table_colours_get_the_natural_name(rgb: RGB, name: str) -> None:
    assert nearest_color_name(rgb) == name


def test_coffee_photo_gives_a_warm_brown_palette() -> None:
    palette = extract_palette(sample_colors(Image.fromarray(data.coffee())))
    assert 3 <= len(palette) <= 6
    total = sum(color.coverage for color in palette)
    assert 0.9 <= total <= 1.0
    warm_names = {"brown", "maroon", "orange", "coral", "tan", "peach", "red", "black", "charcoal"}
    covered_by_warm = sum(color.coverage for color in palette if color.name in warm_names)
    assert covered_by_warm >= 0.8, palette
    assert [c.coverage for c in palette] == sorted((c.coverage for c in palette), reverse=True)


def test_photo_palette_is_deterministic_and_plausible() -> None:
    photo = Image.fromarray(data.chelsea())
    first = extract_palette(sample_colors(photo))
    assert extract_palette(sample_colors(photo)) == first
    assert max(photo.size) > ANALYSIS_SIDE  # the photo itself is sampled down
    names = {color.name for color in first}
    assert names & {"brown", "tan", "gray", "silver", "charcoal"}


def test_batch_palettes_equal_one_by_one_palettes() -> None:
    images = [
        Image.fromarray(data.coffee()),
        painted((50, 50), [((0, 0, 50, 50), (255, 255, 255)), ((0, 0, 25, 50), (0, 0, 128))]),
        Image.new("RGB", (10, 10), (0, 160, 0)),
    ]
    samples = [sample_colors(image) for image in images]
    assert extract_palettes(samples) == [extract_palette(sample) for sample in samples]
    assert extract_palettes([]) == []
