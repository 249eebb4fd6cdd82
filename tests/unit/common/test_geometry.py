"""Box IoU: the one definition the scorer, the evaluation and the shape worlds share."""

from __future__ import annotations

import pytest

from services.common.geometry import box_iou


def test_box_shifted_by_half_its_width_has_iou_one_third() -> None:
    # 0.4 x 0.4 squares shifted by half a width: intersection 0.2 x 0.4 = 0.08,
    # union 0.16 + 0.16 - 0.08 = 0.24 -> 1/3
    assert box_iou((0.2, 0.2, 0.6, 0.6), (0.4, 0.2, 0.8, 0.6)) == pytest.approx(1 / 3)
    assert box_iou((0.4, 0.2, 0.8, 0.6), (0.2, 0.2, 0.6, 0.6)) == pytest.approx(1 / 3)


def test_disjoint_and_edge_sharing_boxes_do_not_overlap() -> None:
    assert box_iou((0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9)) == 0.0
    assert box_iou((0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5)) == 0.0


def test_a_box_inside_another_scores_their_area_ratio() -> None:
    assert box_iou((0.0, 0.0, 1.0, 1.0), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.25)


def test_boxes_in_pixels_score_as_in_fractions() -> None:
    assert box_iou((20, 20, 60, 60), (40, 20, 80, 60)) == pytest.approx(1 / 3)


def test_a_collapsed_box_reproduced_exactly_scores_one() -> None:
    # Two decimals collapse a 3 px wide object on a 512 px image to a line (x0 == x1).
    line = (0.3, 0.3, 0.3, 0.5)
    point = (0.3, 0.3, 0.3, 0.3)
    assert box_iou(line, line) == 1.0
    assert box_iou(point, point) == 1.0
    # No jump at zero: identical boxes score 1.0 however small they are.
    assert box_iou((0.3, 0.3, 0.3 + 1e-9, 0.5), (0.3, 0.3, 0.3 + 1e-9, 0.5)) == 1.0


def test_a_collapsed_box_overlaps_nothing_else() -> None:
    line = (0.3, 0.3, 0.3, 0.5)
    assert box_iou(line, (0.4, 0.3, 0.4, 0.5)) == 0.0
    assert box_iou(line, (0.3, 0.3, 0.3, 0.4)) == 0.0  # a part of it: still no area
    assert box_iou(line, (0.0, 0.0, 1.0, 1.0)) == 0.0  # inside a real box: no shared area
    assert box_iou((0.0, 0.0, 1.0, 1.0), line) == 0.0
