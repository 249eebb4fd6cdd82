"""The BoigSD efficacy evaluation as a printed table, an HTML page (table, verdicts, the
reward and true-KPI curves over training, image grids) and JSON."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.table import Table

from services.common.images import png_data_uri
from services.trainer.evaluate.results import Estimate
from services.trainer.evaluate.sd.efficacy import (
    BASE,
    BOIGSD,
    LIFT_VS_BASE,
    LIFT_VS_PROMPT,
    LOWER_IS_BETTER,
    METRICS,
    PERCENT_METRICS,
    PROMPT_ONLY,
    REAL,
    SdEfficacy,
    reward_hacking,
)
from services.trainer.world_sd.report import metric_table_html

GRID_POSTS = 12


def _cell(estimate: Estimate | None, metric: str) -> str:
    if estimate is None:
        return "–"
    if metric in PERCENT_METRICS:
        return f"{estimate.value:+.1f}% [{estimate.low:+.1f}, {estimate.high:+.1f}]"
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def ranking(evaluation: SdEfficacy) -> list[tuple[str, Estimate]]:
    """Generated methods by true KPI vs base, best first (the real post is a reference, not
    a method)."""
    rows = [
        (name, row[LIFT_VS_BASE])
        for name, row in evaluation.table.items()
        if name != REAL and row.get(LIFT_VS_BASE) is not None
    ]
    return sorted(
        ((name, estimate) for name, estimate in rows if estimate is not None),
        key=lambda item: -item[1].value,
    )


def verdicts(evaluation: SdEfficacy) -> list[str]:
    """The answers in words: does BoigSD beat the base model and prompt-only (95% intervals of
    the paired difference), who wins, and whether reward and true KPI parted ways."""
    lines = []
    row = evaluation.table.get(BOIGSD)
    if row is not None:
        for metric, other in ((LIFT_VS_BASE, BASE), (LIFT_VS_PROMPT, PROMPT_ONLY)):
            estimate = row.get(metric)
            if estimate is None:
                continue
            if estimate.low > 0:
                answer = "raises it (the 95% interval excludes zero)"
            elif estimate.high < 0:
                answer = "LOWERS it (the 95% interval excludes zero)"
            else:
                answer = "does not change it measurably (the 95% interval includes zero)"
            lines.append(
                f"BoigSD vs {other}: true KPI {estimate.value:+.1f}% "
                f"[{estimate.low:+.1f}, {estimate.high:+.1f}] -> {answer}"
            )
    ranked = ranking(evaluation)
    if ranked:
        lines.append(
            "ranking by true KPI vs base: "
            + ", ".join(f"{name} {estimate.value:+.1f}%" for name, estimate in ranked)
        )
    hacked = reward_hacking(evaluation.curve)
    if hacked:
        lines.append("reward rose while the true KPI fell: " + "; ".join(hacked))
        if evaluation.published_epoch is not None:
            lines.append(f"the evaluated BoigSD LoRA is epoch {evaluation.published_epoch}'s")
    elif evaluation.curve:
        lines.append("no evaluated stretch where the reward rose while the true KPI fell")
    return lines


def print_report(evaluation: SdEfficacy, console: Console) -> None:
    table = Table(
        title="BoigSD on held-out future posts: hidden true KPI (95% bootstrap over posts)"
    )
    table.add_column("method")
    for metric in METRICS:
        table.add_column(f"{metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}")
    for method, row in evaluation.table.items():
        table.add_row(method, *(_cell(row.get(metric), metric) for metric in METRICS))
    console.print(table)
    if evaluation.curve:
        curve = Table(title="BoigSD over training (held-out posts)")
        for column in ("epoch", "training reward", "true KPI vs base", "run's held-out reward"):
            curve.add_column(column)
        for point in evaluation.curve:
            curve.add_row(
                str(point.epoch),
                _cell(point.reward, "reward"),
                _cell(point.lift, LIFT_VS_BASE),
                "–" if point.heldout_reward is None else f"{point.heldout_reward:.4f}",
            )
        console.print(curve)
    calibration = evaluation.calibration
    console.print(
        f"judge check on the real creatives: Pearson r {calibration['pearson_r']:.3f}, mean "
        f"|error| {calibration['mean_abs_error']:.3f} log-KPI against their drawn attributes"
    )
    for line in verdicts(evaluation):
        console.print(line)
    console.print(", ".join(f"{key}: {value}" for key, value in evaluation.meta.items()))


def curve_plot(evaluation: SdEfficacy) -> Image.Image | None:
    """Training reward and true KPI vs base over the evaluated epochs, as one figure."""
    points = [p for p in evaluation.curve if p.reward is not None and p.lift is not None]
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [p.epoch for p in points]
    figure, reward_axis = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    _errorbars(reward_axis, epochs, [p.reward for p in points], "tab:blue", "o", "training reward")
    reward_axis.set_xlabel("DDPO epoch")
    reward_axis.set_ylabel("training reward", color="tab:blue")
    lift_axis = reward_axis.twinx()
    _errorbars(
        lift_axis, epochs, [p.lift for p in points], "tab:orange", "s", "true KPI vs base (%)"
    )
    lift_axis.axhline(0.0, color="grey", linewidth=0.8)
    lift_axis.set_ylabel("true KPI vs base (%)", color="tab:orange")
    if evaluation.published_epoch is not None:
        reward_axis.axvline(
            evaluation.published_epoch, color="green", linestyle="--", label="evaluated LoRA"
        )
    handles = [
        *reward_axis.get_legend_handles_labels()[0],
        *lift_axis.get_legend_handles_labels()[0],
    ]
    reward_axis.legend(handles=handles, loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _errorbars(
    axis: Any,
    epochs: list[int],
    estimates: list[Estimate | None],
    colour: str,
    marker: str,
    label: str,
) -> None:
    kept = [(epoch, e) for epoch, e in zip(epochs, estimates, strict=True) if e is not None]
    axis.errorbar(
        [epoch for epoch, _ in kept],
        [e.value for _, e in kept],
        yerr=[[e.value - e.low for _, e in kept], [e.high - e.value for _, e in kept]],
        color=colour,
        marker=marker,
        capsize=3,
        label=label,
    )


def write_html(evaluation: SdEfficacy, path: Path) -> Path:
    header, rows = metric_table_html(evaluation.table, METRICS, _cell)
    answers = "".join(f"<li>{html.escape(line)}</li>" for line in verdicts(evaluation))
    plot = curve_plot(evaluation)
    plot_html = "" if plot is None else f'<img class=plot src="{png_data_uri(plot)}" alt="curves">'
    curve_rows = "".join(
        f"<tr><td>{p.epoch}</td><td>{html.escape(_cell(p.reward, 'reward'))}</td>"
        f"<td>{html.escape(_cell(p.lift, LIFT_VS_BASE))}</td>"
        f"<td>{'–' if p.heldout_reward is None else f'{p.heldout_reward:.4f}'}</td></tr>"
        for p in evaluation.curve
    )
    names = [method.name for method in evaluation.methods]
    grid_rows = []
    for index, post in enumerate(evaluation.posts[:GRID_POSTS]):
        cells = []
        for method in evaluation.methods:
            images = "".join(
                f'<img src="{png_data_uri(image)}" alt="{html.escape(method.name)}">'
                for image in method.images[index]
            )
            cells.append(f"<td>{images}</td>")
        grid_rows.append(
            f"<tr><td class=prompt>{html.escape(post.context.account)}<br>"
            f"<small>{html.escape(post.id)} {post.posted_at:%Y-%m-%d %H:%M}</small></td>"
            + "".join(cells)
            + "</tr>"
        )
    calibration = evaluation.calibration
    meta = "".join(
        f"<li>{html.escape(key)}: {html.escape(value)}</li>"
        for key, value in evaluation.meta.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>BoigSD efficacy</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
table {{ border-collapse: collapse; margin-bottom: 2rem; }}
td, th {{ border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }}
img {{ width: 64px; height: 64px; image-rendering: pixelated; margin: 1px; }}
img.plot {{ width: auto; height: auto; image-rendering: auto; }}
td.prompt {{ max-width: 12rem; font-size: 0.85rem; }}
</style></head><body>
<h1>Does BoigSD raise the true KPI?</h1>
<p>Held-out future posts of the synthetic world. Each method draws images for the post's
context from the same seeds; an independent judge (exact colour histogram, the world's tone
statistics, a second detector of another seed and width) measures each image, and the world's
hidden ground truth gives its expected KPI. Lifts are paired per post (same brand, same time,
same noise seeds): exp(mean per-post difference of expected log-KPI) - 1, the geometric-mean
change of expected KPI, with 95% bootstrap intervals over posts.</p>
<ul>{answers}</ul>
<table><tr><th>method</th>{header}</tr>{rows}</table>
<p>Judge check on the real creatives: Pearson r {calibration["pearson_r"]:.3f}, mean |error|
{calibration["mean_abs_error"]:.3f} log-KPI against the attributes they were drawn with.</p>
<h2>Over training</h2>
{plot_html}
<table><tr><th>epoch</th><th>training reward</th><th>true KPI vs base</th>
<th>run's held-out reward</th></tr>{curve_rows}</table>
<ul>{meta}</ul>
<h2>Samples</h2>
<table><tr><th>post</th>{"".join(f"<th>{html.escape(n)}</th>" for n in names)}</tr>
{"".join(grid_rows)}</table>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _estimate(estimate: Estimate | None) -> dict[str, float] | None:
    if estimate is None:
        return None
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high, "n": estimate.n}


def write_json(evaluation: SdEfficacy, path: Path) -> Path:
    data = {
        "meta": evaluation.meta,
        "calibration": evaluation.calibration,
        "published_epoch": evaluation.published_epoch,
        "verdicts": verdicts(evaluation),
        "table": {
            method: {metric: _estimate(estimate) for metric, estimate in row.items()}
            for method, row in evaluation.table.items()
        },
        "curve": [
            {
                "epoch": p.epoch,
                "reward": _estimate(p.reward),
                "true_kpi_vs_base_percent": _estimate(p.lift),
                "heldout_reward": p.heldout_reward,
            }
            for p in evaluation.curve
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
