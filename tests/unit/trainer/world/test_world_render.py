"""Rendered creatives and the attribute records that describe them."""

from __future__ import annotations

import io

import numpy as np
import pytest

from services.trainer.world.render import CreativeSpec, ShapeSpec, render_creative


def _png(spec: CreativeSpec) -> bytes:
    buffer = io.BytesIO()
    render_creative(spec, size=128)[0].save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_flat_creative_reports_its_colour_and_tones() -> None:
    image, attributes = render_creative(
        CreativeSpec(background=((20, 20, 25),), gradient_angle=0.0, shapes=()), size=64
    )
    assert image.size == (64, 64)
    assert [entry.rgb for entry in attributes.palette] == [(20, 20, 25)]
    assert attributes.palette[0].coverage == 1.0
    assert attributes.tones.mean_lightness < 15
    assert attributes.tones.lightness_std == pytest.approx(0.0, abs=1e-6)
    assert attributes.objects == () and attributes.text is None


def test_shapes_are_reported_with_boxes_areas_and_palette_coverage() -> None:
    spec = CreativeSpec(
        background=((250, 250, 250), (200, 220, 250)),
        gradient_angle=0.3,
        shapes=(
            ShapeSpec(
                label="circle", rgb=(230, 40, 40), center=(0.3, 0.3), radius=0.2, rotation=0.0
            ),
            ShapeSpec(label="star", rgb=(40, 40, 200), center=(0.7, 0.7), radius=0.2, rotation=0.4),
        ),
        text="SALE",
        text_rgb=(0, 0, 0),
    )
    _, attributes = render_creative(spec, size=128)
    circle, star = attributes.objects
    assert circle.label == "circle" and star.label == "star"
    assert circle.box == pytest.approx((0.1, 0.1, 0.5, 0.5), abs=0.02)
    assert circle.area == pytest.approx(np.pi * 0.2**2, rel=0.05)
    assert star.area < circle.area  # a star fills far less of its circle than a disc
    assert sum(entry.coverage for entry in attributes.palette) == pytest.approx(1.0)
    colours = {entry.rgb for entry in attributes.palette}
    assert {(230, 40, 40), (40, 40, 200), (0, 0, 0)} <= colours
    assert attributes.text == "SALE"
    assert attributes.tones.warmth < 0.5  # blue and red roughly balance on a pale blue ground


def test_a_warm_creative_reads_warm_and_a_cool_one_cool() -> None:
    warm = render_creative(CreativeSpec(((222, 120, 40),), 0.0, ()), size=32)[1]
    cool = render_creative(CreativeSpec(((30, 90, 240),), 0.0, ()), size=32)[1]
    assert warm.tones.warmth > 0.9 and cool.tones.warmth < -0.9


def test_rendering_is_deterministic() -> None:
    spec = CreativeSpec(
        background=((10, 200, 30), (250, 10, 90)),
        gradient_angle=1.0,
        shapes=(ShapeSpec("triangle", (0, 0, 0), (0.5, 0.5), 0.3, 0.2),),
        text="PLAY!",
    )
    assert _png(spec) == _png(spec)


def test_an_unknown_shape_is_refused() -> None:
    spec = CreativeSpec(((0, 0, 0),), 0.0, (ShapeSpec("hexagon", (1, 2, 3), (0.5, 0.5), 0.2, 0.0),))
    with pytest.raises(ValueError, match="hexagon"):
        render_creative(spec, size=32)
