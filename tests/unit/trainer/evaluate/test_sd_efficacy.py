"""The BoigSD efficacy evaluation: the judge's measurement agrees with the ground truth on
creatives whose attributes are known, methods are compared per post with honest intervals,
and the report says what the numbers say."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.contracts import Context, DetectedObject, Verbalization
from services.trainer.evaluate.results import Estimate
from services.trainer.evaluate.sd import report
from services.trainer.evaluate.sd.efficacy import (
    BASE,
    BEST_OF_N,
    BOIGSD,
    LIFT_VS_BASE,
    LIFT_VS_PROMPT,
    PROMPT_ONLY,
    REAL,
    TRUE_LOG_KPI,
    CurvePoint,
    HeldOutPost,
    JudgedMethod,
    MethodImages,
    SdEfficacy,
    best_of_n,
    efficacy_table,
    judge_calibration,
    judge_method,
    reward_hacking,
)
from services.trainer.evaluate.sd.measure import colour_histogram, measure
from services.trainer.world.brands import COFFEE, DEFAULT_BRANDS
from services.trainer.world.generate import sample_creative_spec
from services.trainer.world.ground_truth import expected_log_kpi, fractional_year
from services.trainer.world.render import render_creative
from services.trainer.world.tastes import taste_of

NOON = datetime(2023, 6, 7, 12, 0, tzinfo=UTC)


def test_the_colour_histogram_counts_every_pixel() -> None:
    image = Image.new("RGB", (10, 10), (10, 20, 30))
    image.paste((200, 0, 0), (0, 0, 10, 3))
    palette = colour_histogram(image)
    assert [(entry.rgb, entry.coverage) for entry in palette] == [
        ((10, 20, 30), pytest.approx(0.7)),
        ((200, 0, 0), pytest.approx(0.3)),
    ]


def test_the_judge_measures_creatives_as_the_ground_truth_drew_them() -> None:
    """On world creatives drawn at 64 px (text-free), the measured image gives the expected
    log-KPI its true attributes give, given the objects a perfect detector would find."""
    rng = np.random.default_rng(0)
    errors: dict[int, list[float]] = {1: [], 2: []}
    for brand in DEFAULT_BRANDS:
        for _ in range(6):
            spec = sample_creative_spec(rng, brand, fractional_year(NOON), text=None)
            image, drawn = render_creative(spec, size=64)
            found = [
                DetectedObject(label=obj.label, confidence=0.9, box=_rounded(obj.box))
                for obj in drawn.objects
            ]
            measured = measure(image, found)
            assert {o.label for o in measured.objects} == {o.label for o in drawn.objects}
            errors[len(spec.background)].append(
                abs(expected_log_kpi(measured, brand, NOON) - expected_log_kpi(drawn, brand, NOON))
            )
    # Flat grounds: only anti-aliased edges (colours of their own) and the record's sparser
    # tone sampling differ. Gradients: the record keeps the two halves' mean colours, the
    # histogram the real ramp, so their palette terms may differ by a few hundredths.
    assert errors[1] and max(errors[1]) < 0.04, errors[1]
    assert errors[2] and max(errors[2]) < 0.1, errors[2]


def _rounded(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (round(v, 2) for v in box)
    return (x0, y0, x1, y1)


# --- methods compared on fake posts --------------------------------------------------------


def _posts(count: int) -> list[HeldOutPost]:
    return [
        HeldOutPost(
            id=f"p{i}",
            context=Context(account=COFFEE.account, posted_at=NOON),
            brand=COFFEE,
            real_image=Image.new("RGB", (16, 16), (128, 128, 128)),
            real_description=Verbalization(),
            recorded_log_kpi=0.0,
        )
        for i in range(count)
    ]


def _flat(rgb: tuple[int, int, int], jitter: int) -> Image.Image:
    return Image.new("RGB", (16, 16), tuple(min(255, c + jitter) for c in rgb))


async def _no_objects(images: list[Image.Image]) -> list[Verbalization]:
    return [Verbalization() for _ in images]


async def _brightness(context: Context, images: list[Image.Image]) -> list[float]:
    return [float(np.asarray(image).mean()) / 255 for image in images]


def _judged(name: str, images: list[list[Image.Image]], posts: list[HeldOutPost]) -> JudgedMethod:
    method = MethodImages(name, images, [Verbalization() for _ in posts])
    return asyncio.run(judge_method(method, posts, _no_objects, _brightness))


def test_a_method_drawing_what_the_audience_likes_wins_with_an_interval_clear_of_zero() -> None:
    posts = _posts(12)
    liked = taste_of(COFFEE).palette[0]
    disliked = (0, 90, 255) if sum(liked) > 300 else (250, 250, 250)
    base = _judged(BASE, [[_flat(disliked, j) for j in range(3)] for _ in posts], posts)
    better = _judged(BOIGSD, [[_flat(liked, j) for j in range(3)] for _ in posts], posts)
    real = _judged(REAL, [[p.real_image] for p in posts], posts)
    prompt = _judged(PROMPT_ONLY, [[_flat(disliked, j) for j in range(4)] for _ in posts], posts)
    table = efficacy_table([real, base, prompt, best_of_n(prompt, 4), better], posts)

    lift = table[BOIGSD][LIFT_VS_BASE]
    assert lift is not None and lift.low > 0 and lift.n == len(posts)
    assert table[BASE][LIFT_VS_BASE] == Estimate(0.0, 0.0, 0.0, len(posts))
    assert table[BOIGSD][LIFT_VS_PROMPT] is not None
    assert table[BOIGSD][TRUE_LOG_KPI] is not None
    # Best-of-N hands out the brightest (highest-reward) of the first N draws.
    best = table[BEST_OF_N]["training reward"]
    assert best is not None and best.value == pytest.approx(
        max(np.asarray(_flat(disliked, j)).mean() for j in range(4)) / 255
    )


def test_best_of_n_needs_n_draws() -> None:
    posts = _posts(2)
    judged = _judged(PROMPT_ONLY, [[_flat((1, 2, 3), 0)] for _ in posts], posts)
    with pytest.raises(ValueError, match="best-of-4"):
        best_of_n(judged, 4)


def test_the_judge_check_compares_measured_and_drawn_log_kpi() -> None:
    posts = _posts(3)
    real = _judged(REAL, [[p.real_image] for p in posts], posts)
    measured = real.per_post(real.log_kpi)
    shifted = [
        HeldOutPost(**{**p.__dict__, "recorded_log_kpi": m + 0.1 * i})
        for i, (p, m) in enumerate(zip(posts, measured, strict=True))
    ]
    check = judge_calibration(real, shifted)
    assert check["mean_abs_error"] == pytest.approx(0.1)


def test_reward_rising_while_the_true_kpi_falls_is_called_out() -> None:
    def point(epoch: int, reward: float, lift: float) -> CurvePoint:
        return CurvePoint(
            epoch,
            Estimate(reward, reward - 0.01, reward + 0.01, 8),
            Estimate(lift, lift - 1, lift + 1, 8),
            None,
        )

    honest = [point(0, 0.40, 0.0), point(10, 0.45, 5.0), point(20, 0.47, 6.0)]
    hacked = [*honest, point(30, 0.50, -4.0)]
    assert reward_hacking(honest) == []
    assert reward_hacking(hacked) == [
        "epochs 20->30: reward 0.470->0.500 while true KPI vs base +6.0%->-4.0%"
    ]


def test_the_report_states_the_answer_and_writes_html_and_json(tmp_path: Path) -> None:
    posts = _posts(8)
    liked = taste_of(COFFEE).palette[0]
    methods = [
        _judged(REAL, [[p.real_image] for p in posts], posts),
        _judged(BASE, [[_flat((0, 0, 0), j) for j in range(2)] for _ in posts], posts),
        _judged(PROMPT_ONLY, [[_flat((0, 0, 0), j) for j in range(2)] for _ in posts], posts),
        _judged(BOIGSD, [[_flat(liked, j) for j in range(2)] for _ in posts], posts),
    ]
    evaluation = SdEfficacy(
        posts=posts,
        methods=methods,
        table=efficacy_table(methods, posts),
        calibration={"pearson_r": 0.9, "mean_abs_error": 0.05},
        curve=[],
        published_epoch=None,
        meta={"held-out posts": "8"},
    )
    lines = report.verdicts(evaluation)
    assert lines[0].startswith("BoigSD vs base: true KPI +") and "excludes zero" in lines[0]
    assert report.ranking(evaluation)[0][0] == BOIGSD

    page = report.write_html(evaluation, tmp_path / "r.html").read_text()
    assert "Does BoigSD raise the true KPI?" in page and page.count("<img") >= 8 * 4
    data = json.loads(report.write_json(evaluation, tmp_path / "r.json").read_text())
    assert data["table"][BOIGSD][LIFT_VS_BASE]["low"] > 0
    assert data["verdicts"] == lines


def test_the_report_draws_the_curves_and_names_the_published_epoch(tmp_path: Path) -> None:
    posts = _posts(4)
    methods = [
        _judged(REAL, [[p.real_image] for p in posts], posts),
        _judged(BASE, [[_flat((0, 0, 0), j) for j in range(2)] for _ in posts], posts),
        _judged(PROMPT_ONLY, [[_flat((0, 0, 0), j) for j in range(2)] for _ in posts], posts),
    ]
    curve = [
        CurvePoint(0, Estimate(0.40, 0.39, 0.41, 4), Estimate(0.0, -1, 1, 4), 0.41),
        CurvePoint(10, Estimate(0.45, 0.44, 0.46, 4), Estimate(6.0, 5, 7, 4), 0.46),
        CurvePoint(20, Estimate(0.50, 0.49, 0.51, 4), Estimate(-3.0, -4, -2, 4), 0.44),
    ]
    evaluation = SdEfficacy(
        posts=posts,
        methods=methods,
        table=efficacy_table(methods, posts),
        calibration={"pearson_r": 0.9, "mean_abs_error": 0.05},
        curve=curve,
        published_epoch=10,
        meta={},
    )
    plot = report.curve_plot(evaluation)
    assert plot is not None and plot.width > 300
    assert len(set(plot.getdata())) > 10  # lines and labels, not a blank canvas
    lines = report.verdicts(evaluation)
    assert any(
        line.startswith("reward rose while the true KPI fell: epochs 10->20") for line in lines
    )
    assert "the evaluated BoigSD LoRA is epoch 10's" in lines
    page = report.write_html(evaluation, tmp_path / "r.html").read_text()
    assert "class=plot" in page
