"""The world SD evaluation as a printed table and an HTML page with image grids (prompt, the
real creative the caption came from, the trained model's samples, the floor's)."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from services.common.images import png_data_uri
from services.trainer.evaluate.results import Estimate
from services.trainer.world_sd.evaluate import (
    FLOOR,
    LOWER_IS_BETTER,
    METRICS,
    REAL,
    ROUND_TRIP,
    TRAINED,
    WorldSdEvaluation,
)

GRID_CAPTIONS = 16


def colour_goal(evaluation: WorldSdEvaluation) -> tuple[float, float, bool] | None:
    """(threshold, trained value, met): colour distance at least two thirds of the way from
    the floor to the autoencoder round trip, with the trained model's interval clear of the
    floor's."""
    trained = evaluation.table[TRAINED]["colour distance"]
    floor = evaluation.table[FLOOR]["colour distance"]
    ceiling = evaluation.table[ROUND_TRIP]["colour distance"]
    if trained is None or floor is None or ceiling is None:
        return None
    threshold = floor.value - 2 / 3 * (floor.value - ceiling.value)
    return threshold, trained.value, trained.value <= threshold and trained.high < floor.low


def _cell(estimate: Estimate | None, metric: str) -> str:
    if estimate is None:
        return "–"
    if metric == "FID":
        return f"{estimate.value:.1f} (n={estimate.n})"
    digits = 1 if metric == "colour distance" else 3
    return f"{estimate.value:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"


def print_report(evaluation: WorldSdEvaluation, console: Console) -> None:
    table = Table(title="world SD on held-out captions (95% bootstrap intervals over captions)")
    table.add_column("method")
    for metric in METRICS:
        arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
        table.add_column(f"{metric} {arrow}")
    for method, row in evaluation.table.items():
        table.add_row(method, *(_cell(row.get(metric), metric) for metric in METRICS))
    console.print(table)
    console.print(", ".join(f"{key}: {value}" for key, value in evaluation.meta.items()))
    goal = colour_goal(evaluation)
    if goal is not None:
        threshold, value, met = goal
        console.print(
            f"colour goal (two thirds of the way from the floor to the round trip, interval "
            f"clear of the floor): need ≤ {threshold:.1f}, got {value:.1f} -> "
            f"{'met' if met else 'NOT met'}"
        )


def metric_table_html(
    table: Mapping[str, Mapping[str, Estimate | None]],
    metrics: Sequence[str],
    cell: Callable[[Estimate | None, str], str],
) -> tuple[str, str]:
    """(header cells, body rows) of a method x metric table, each cell as ``cell`` writes it."""
    header = "".join(f"<th>{html.escape(metric)}</th>" for metric in metrics)
    rows = "".join(
        f"<tr><th>{html.escape(method)}</th>"
        + "".join(f"<td>{html.escape(cell(row.get(m), m))}</td>" for m in metrics)
        + "</tr>"
        for method, row in table.items()
    )
    return header, rows


def write_html(evaluation: WorldSdEvaluation, path: Path) -> Path:
    by_name = {method.name: method for method in evaluation.methods}
    header, rows = metric_table_html(evaluation.table, METRICS, _cell)
    grids = []
    for index, caption in enumerate(evaluation.captions[:GRID_CAPTIONS]):
        cells = []
        for name in (REAL, ROUND_TRIP, TRAINED, FLOOR):
            images = "".join(
                f'<img src="{png_data_uri(image)}" alt="{html.escape(name)}">'
                for image in by_name[name].images[index]
            )
            cells.append(f"<td>{images}</td>")
        grids.append(
            f"<tr><td class=prompt>{html.escape(caption.caption)}<br><small>"
            f"{html.escape(caption.id)} ({html.escape(caption.level)})</small></td>"
            + "".join(cells)
            + "</tr>"
        )
    goal = colour_goal(evaluation)
    goal_text = (
        ""
        if goal is None
        else f"<p>Colour goal: ≤ {goal[0]:.1f} needed, {goal[1]:.1f} measured: "
        f"<b>{'met' if goal[2] else 'not met'}</b>.</p>"
    )
    meta = "".join(
        f"<li>{html.escape(key)}: {html.escape(value)}</li>"
        for key, value in evaluation.meta.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>world SD evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
table {{ border-collapse: collapse; margin-bottom: 2rem; }}
td, th {{ border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }}
img {{ width: 96px; height: 96px; image-rendering: pixelated; margin: 1px; }}
td.prompt {{ max-width: 22rem; font-size: 0.85rem; }}
</style></head><body>
<h1>World SD on held-out captions</h1>
<p>Each image is described by the featurizer and compared with the description its prompt was
written from. Colour distance: mean sRGB distance of matched palette colours. Shape recall:
share of prompted shapes the detector finds. Diversity: mean pairwise RMS pixel distance of
one prompt's samples. FID against other held-out creatives.</p>
<table><tr><th>method</th>{header}</tr>{rows}</table>
{goal_text}<ul>{meta}</ul>
<h2>Samples</h2>
<table><tr><th>prompt</th><th>{html.escape(REAL)}</th><th>{html.escape(ROUND_TRIP)}</th>
<th>{html.escape(TRAINED)}</th><th>{html.escape(FLOOR)}</th></tr>{"".join(grids)}</table>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_json(evaluation: WorldSdEvaluation, path: Path) -> Path:
    data = {
        "meta": evaluation.meta,
        "fid_images": evaluation.fid_images,
        "table": {
            method: {
                metric: None
                if estimate is None
                else {
                    "value": estimate.value,
                    "low": estimate.low,
                    "high": estimate.high,
                    "n": estimate.n,
                }
                for metric, estimate in row.items()
            }
            for method, row in evaluation.table.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
