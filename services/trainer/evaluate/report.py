"""The report of an evaluation: a printed table (rich) and one self-contained HTML file.

BoigLLM (the first method) is said to beat a baseline only when their confidence intervals
do not overlap; a better point estimate alone wins nothing. The description tables show the
methods that describe (``result.methods``), the behaviour table the methods that predict
levels (BoigLLM first, then the other models and the behaviour baselines).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from jinja2 import Environment, StrictUndefined, Template
from PIL import Image
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.common.verbalization import repair
from services.trainer.evaluate.results import (
    ALL_BUCKETS,
    BEHAVIOUR_METRICS,
    BUCKETS,
    DESCRIPTION_METRICS,
    Better,
    Estimate,
    EvaluationResult,
    ExampleRow,
    MetricSpec,
)

MAX_EMBEDDED_IMAGE_BYTES = 2 * 1024 * 1024
NOT_AVAILABLE = "n/a"
_ARROWS = {Better.HIGHER: "↑", Better.LOWER: "↓"}
_NO_DATA_REASONS = {"caption_cosine": "no captions in the data"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _beats(a: Estimate, b: Estimate, better: Better) -> bool:
    """Whether ``a`` is better than ``b`` with separated (non-overlapping) intervals."""
    if better is Better.HIGHER:
        return a.low > b.high
    return a.high < b.low


def format_estimate(e: Estimate | None, digits: int = 3) -> str:
    """``0.412 [0.380, 0.445]``, or ``n/a`` when there is no estimate."""
    if e is None:
        return NOT_AVAILABLE
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _format_value(e: Estimate | None, digits: int = 3) -> str:
    return NOT_AVAILABLE if e is None else f"{e.value:.{digits}f}"


# --- what the tables show, computed once for both renderers -------------------------------


@dataclass(frozen=True)
class _MetricRow:
    spec: MetricSpec
    estimates: dict[str, Estimate | None]
    """Method -> estimate, in ``result.methods`` order."""
    beats: dict[str, bool | None]
    """Baseline -> whether the first method beats it with separated intervals."""

    @property
    def arrow(self) -> str:
        return _ARROWS[self.spec.better]

    @property
    def cells(self) -> list[str]:
        return [format_estimate(e) for e in self.estimates.values()]

    @property
    def summary(self) -> str:
        return _summarize(self.beats)

    @property
    def summary_text(self) -> str:
        """The summary, saying so when some baselines had no estimate to compare with."""
        compared = sum(verdict is not None for verdict in self.beats.values())
        if 0 < compared < len(self.beats):
            return f"{self.summary} ({compared} of {len(self.beats)} compared)"
        return self.summary

    @property
    def missing_note(self) -> str | None:
        """Why the whole row is empty, or None when any method has an estimate."""
        if any(e is not None for e in self.estimates.values()):
            return None
        reason = _NO_DATA_REASONS.get(self.spec.key, "no rows where the metric applies")
        return f"{NOT_AVAILABLE} ({reason})"


@dataclass(frozen=True)
class _BucketCell:
    text: str
    best_baseline: str | None
    beats_all: bool

    @property
    def css_class(self) -> str:
        if self.beats_all:
            return "num good"
        return "num na" if self.text == NOT_AVAILABLE else "num"


def _compare(
    estimates: dict[str, Estimate | None], methods: tuple[str, ...], better: Better
) -> dict[str, bool | None]:
    if not methods:
        return {}
    ours = estimates.get(methods[0])
    verdict: dict[str, bool | None] = {}
    for baseline in methods[1:]:
        theirs = estimates.get(baseline)
        verdict[baseline] = None if ours is None or theirs is None else _beats(ours, theirs, better)
    return verdict


def _summarize(beats: dict[str, bool | None]) -> str:
    # Baselines without an estimate (e.g. one that predicts no levels) are left out of the
    # summary rather than counted as losses or wins.
    known = [verdict for verdict in beats.values() if verdict is not None]
    if not known:
        return NOT_AVAILABLE
    if all(known):
        return "yes"
    return "partial" if any(known) else "no"


def _description_estimates(
    result: EvaluationResult, key: str, bucket: str
) -> dict[str, Estimate | None]:
    by_method = result.description.get(key, {})
    return {method: by_method.get(method, {}).get(bucket) for method in result.methods}


def behaviour_methods(result: EvaluationResult) -> tuple[str, ...]:
    """The behaviour table's columns: the first method (the model under evaluation), then
    every other method with a behaviour estimate, those of ``result.methods`` in its order
    before behaviour-only baselines in the order the result lists them."""
    predicting = dict.fromkeys(m for by_method in result.behaviour.values() for m in by_method)
    ours = result.methods[:1]
    known = [m for m in result.methods[1:] if m in predicting]
    extra = [m for m in predicting if m not in result.methods]
    return (*ours, *known, *extra)


def _behaviour_estimates(
    result: EvaluationResult, key: str, methods: tuple[str, ...]
) -> dict[str, Estimate | None]:
    by_method = result.behaviour.get(key, {})
    return {method: by_method.get(method) for method in methods}


def _row(
    spec: MetricSpec, estimates: dict[str, Estimate | None], methods: tuple[str, ...]
) -> _MetricRow:
    return _MetricRow(spec, estimates, _compare(estimates, methods, spec.better))


def _description_rows(result: EvaluationResult, bucket: str) -> list[_MetricRow]:
    return [
        _row(spec, _description_estimates(result, spec.key, bucket), result.methods)
        for spec in DESCRIPTION_METRICS
    ]


def _behaviour_rows(result: EvaluationResult) -> list[_MetricRow]:
    methods = behaviour_methods(result)
    return [
        _row(spec, _behaviour_estimates(result, spec.key, methods), methods)
        for spec in BEHAVIOUR_METRICS
    ]


def _best_baseline(
    estimates: dict[str, Estimate | None], methods: tuple[str, ...], better: Better
) -> tuple[str, Estimate] | None:
    candidates = [(m, e) for m in methods[1:] if (e := estimates.get(m)) is not None]
    if not candidates:
        return None
    pick = max if better is Better.HIGHER else min
    return pick(candidates, key=lambda item: item[1].value)


def _bucket_cell(result: EvaluationResult, spec: MetricSpec, bucket: str) -> _BucketCell:
    row = _row(spec, _description_estimates(result, spec.key, bucket), result.methods)
    ours = row.estimates.get(result.methods[0]) if result.methods else None
    best = _best_baseline(row.estimates, result.methods, spec.better)
    if ours is None and best is None:
        return _BucketCell(NOT_AVAILABLE, None, beats_all=False)
    text = f"{_format_value(ours)} vs {_format_value(best[1] if best else None)}"
    return _BucketCell(text, best[0] if best else None, beats_all=row.summary == "yes")


def verdicts(result: EvaluationResult) -> dict[str, dict[str, bool | None]]:
    """Metric key -> baseline -> whether the first method beats it with separated intervals.

    Description metrics are judged on the "all" bucket; None where either estimate is missing.
    """
    rows = _description_rows(result, ALL_BUCKETS) + _behaviour_rows(result)
    return {row.spec.key: row.beats for row in rows}


def failure_summary(result: EvaluationResult) -> str | None:
    """One line with each describing method's count of failed descriptions and each served
    method's count of repaired ones, or None when the result has no counts (e.g. one
    written before they were counted)."""
    if not result.description_failures and not result.description_repairs:
        return None
    rows = result.meta.get("content rows")
    of_rows = f" of {rows} rows" if rows else ""
    parts = []
    if result.description_failures:
        counts = ", ".join(f"{m} {n}" for m, n in result.description_failures.items())
        parts.append(f"failed descriptions{of_rows} (each scored worst on every metric): {counts}")
    if result.description_repairs:
        counts = ", ".join(f"{m} {n}" for m, n in result.description_repairs.items())
        parts.append(f"descriptions the describer had to repair: {counts}")
    return "; ".join(parts)


# --- printed report --------------------------------------------------------------------------

_SUMMARY_STYLES = {"yes": "bold green", "partial": "yellow", "no": "red", NOT_AVAILABLE: "dim"}


def print_report(result: EvaluationResult, console: Console | None = None) -> None:
    """Print the description table ("all" bucket), a per-bucket summary, the behaviour table
    and what was evaluated."""
    console = console or Console()
    description = _description_rows(result, ALL_BUCKETS)
    console.print(_estimate_table(result, description, "Description", result.methods))
    failures = failure_summary(result)
    if failures is not None:
        console.print(Text(failures))
    console.print(_bucket_table(result))
    behaviour = _behaviour_rows(result)
    console.print(_estimate_table(result, behaviour, "Behaviour", behaviour_methods(result)))
    for key, value in result.meta.items():
        console.print(Text(f"{key}: {value}"))


def _estimate_table(
    result: EvaluationResult, rows: list[_MetricRow], title: str, methods: tuple[str, ...]
) -> Table:
    ours = methods[0] if methods else "model"
    table = Table(title=Text(f"{title} metrics (all rows, {_confidence(result)})"))
    table.add_column(Text("metric"))
    for method in methods:
        table.add_column(Text(method), no_wrap=True)
    table.add_column(Text(f"{ours} beats all baselines?"))
    for row in rows:
        label = Text(f"{row.spec.title} {row.arrow}")
        note = row.missing_note
        if note is not None:
            blanks = [Text("")] * (len(methods) - 1)
            table.add_row(label, Text(note, style="dim"), *blanks, Text(NOT_AVAILABLE, "dim"))
            continue
        summary = Text(row.summary_text, style=_SUMMARY_STYLES[row.summary])
        table.add_row(label, *(Text(cell) for cell in row.cells), summary)
    return table


def _bucket_table(result: EvaluationResult) -> Table:
    ours = result.methods[0] if result.methods else "model"
    table = Table(title=Text(f"Per KPI bucket: {ours} vs best baseline (point estimates)"))
    table.add_column(Text("metric"))
    for bucket in BUCKETS:
        table.add_column(Text(bucket), no_wrap=True)
    for spec in DESCRIPTION_METRICS:
        cells = [_bucket_cell(result, spec, bucket) for bucket in BUCKETS]
        styled = [Text(c.text, style="green" if c.beats_all else "") for c in cells]
        table.add_row(Text(f"{spec.title} {_ARROWS[spec.better]}"), *styled)
    return table


def _confidence(result: EvaluationResult) -> str:
    return f"{result.meta['confidence']} CI" if "confidence" in result.meta else "bootstrap CI"


# --- HTML report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Swatch:
    name: str
    rgb: tuple[int, int, int]
    percent: float

    @property
    def style(self) -> str:
        r, g, b = self.rgb
        return f"width: {self.percent}%; background: rgb({r}, {g}, {b})"


@dataclass(frozen=True)
class _Description:
    text: str
    swatches: tuple[_Swatch, ...]


@dataclass(frozen=True)
class _Card:
    row: ExampleRow
    image_base64: str | None
    truth: _Description
    predictions: tuple[tuple[str, _Description], ...]


def _describe(text: str) -> _Description:
    try:
        colors = repair(text).verbalization.colors
    except ValueError:  # unreadable model output: show the text alone
        colors = []
    swatches = tuple(
        _Swatch(c.name, (c.rgb[0], c.rgb[1], c.rgb[2]), round(c.coverage * 100, 1)) for c in colors
    )
    return _Description(text, swatches)


def _png_base64(path: Path | None) -> str | None:
    """The image as base64 PNG, or None when it is missing, too large or unreadable."""
    if path is None or not path.is_file() or path.stat().st_size > MAX_EMBEDDED_IMAGE_BYTES:
        return None
    data = path.read_bytes()
    png = data if data.startswith(_PNG_SIGNATURE) else _reencode_png(data)
    return None if png is None else base64.b64encode(png).decode("ascii")


def _reencode_png(data: bytes) -> bytes | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return buffer.getvalue()


def _card(row: ExampleRow, methods: tuple[str, ...]) -> _Card:
    extra = [method for method in row.predictions if method not in methods]
    predictions = tuple(
        (method, _describe(row.predictions.get(method, ""))) for method in (*methods, *extra)
    )
    return _Card(row, _png_base64(row.image_path), _describe(row.truth), predictions)


def write_html(result: EvaluationResult, path: Path) -> Path:
    """Write one self-contained HTML report (inline CSS and images) atomically; return path."""
    predicting = behaviour_methods(result)
    html = _template().render(
        title=f"{result.methods[0] if result.methods else 'Model'} evaluation",
        meta=result.meta,
        methods=result.methods,
        behaviour_methods=predicting,
        baselines=[*result.methods[1:], *(m for m in predicting if m not in result.methods)],
        failures=failure_summary(result),
        confidence=_confidence(result),
        bucket_names=BUCKETS,
        bucket_rows=[
            (spec, [_bucket_cell(result, spec, b) for b in BUCKETS]) for spec in DESCRIPTION_METRICS
        ],
        description_tables=[(b, _description_rows(result, b)) for b in BUCKETS],
        behaviour_rows=_behaviour_rows(result),
        verdict_rows=_description_rows(result, ALL_BUCKETS) + _behaviour_rows(result),
        cards=[_card(row, result.methods) for row in result.examples],
        arrows=_ARROWS,
        summary_classes={"yes": "good", "partial": "partial", NOT_AVAILABLE: "na"},
    )
    _write_atomically(path, html)
    return path


def write_json(result: EvaluationResult, path: Path) -> Path:
    """The whole result as JSON (estimates, examples, meta) atomically, for tools and for
    comparing runs; return ``path``."""
    data = dataclasses.asdict(result)
    for example in data["examples"]:
        if example["image_path"] is not None:
            example["image_path"] = str(example["image_path"])
    _write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not a with-block: the file must outlive its handle so that os.replace can move it.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates 0600; a report is meant to be opened by anyone who may
        # read the folder.
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


@cache
def _template() -> Template:
    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True)
    return environment.from_string(_TEMPLATE)


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --bg: #f6f7f9; --head: #eef0f4;
  --good: #dcf2e2; --good-fg: #1d6b34; --mid: #fff3d1; --mid-fg: #7a5a00; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.7rem; margin: 0 0 8px; }
h2 { font-size: 1.25rem; margin: 32px 0 6px; border-bottom: 2px solid var(--line);
  padding-bottom: 4px; }
h3 { font-size: 1.05rem; margin: 20px 0 4px; }
p.note { color: var(--muted); margin: 4px 0 10px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0;
  color: var(--muted); }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 14px; min-width: 60%;
  font-variant-numeric: tabular-nums; border: 1px solid var(--line); }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--head); font-weight: 600; }
td.num { white-space: nowrap; }
td.na { color: var(--muted); font-style: italic; }
td.good { background: var(--good); color: var(--good-fg); font-weight: 600; }
td.partial { background: var(--mid); color: var(--mid-fg); }
.arrow { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr));
  gap: 16px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px;
  display: flex; flex-direction: column; gap: 8px; }
.card img { width: 100%; max-height: 420px; object-fit: contain; border-radius: 4px;
  display: block; background: var(--head); }
.card .noimg { padding: 28px 0; text-align: center; color: var(--muted);
  background: var(--head); border-radius: 4px; }
.card .who { color: var(--muted); font-size: .9rem; }
.card .post { margin: 0; }
.desc h4 { margin: 6px 0 2px; font-size: .9rem; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 2px 0;
  font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--bg); border-radius: 4px; padding: 6px 8px; }
.palette { display: flex; height: 16px; border: 1px solid var(--line); border-radius: 3px;
  overflow: hidden; background: #fff; }
.swatch { display: block; height: 100%; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
{% if meta %}
<dl class="meta">
{% for key, value in meta.items() %}
<dt>{{ key }}</dt><dd>{{ value }}</dd>
{% endfor %}
</dl>
{% endif %}
<p class="note">{{ methods[0] if methods else "The model" }} beats a baseline only where their
confidence intervals ({{ confidence }}) do not overlap. ↑ higher is better, ↓ lower is better.</p>

{% macro metric_label(spec) -%}
{{ spec.title }} <span class="arrow">{{ arrows[spec.better] }}</span>
{%- endmacro %}
{% macro estimate_table(rows, columns) %}
<div class="scroll"><table>
<thead><tr><th>metric</th>
{% for method in columns %}<th>{{ method }}</th>{% endfor %}
<th>{{ columns[0] if columns else "model" }} beats all baselines?</th></tr></thead>
<tbody>
{% for row in rows %}
<tr><td>{{ metric_label(row.spec) }}</td>
{% if row.missing_note %}
<td class="na" colspan="{{ columns|length }}">{{ row.missing_note }}</td><td class="na">n/a</td>
{% else %}
{% for cell in row.cells %}
<td class="num{{ ' na' if cell == 'n/a' else '' }}">{{ cell }}</td>
{% endfor %}
<td class="{{ summary_classes.get(row.summary, '') }}">{{ row.summary_text }}</td>
{% endif %}
</tr>
{% endfor %}
</tbody></table></div>
{% endmacro %}

<h2>Summary per KPI bucket</h2>
<p class="note">{{ methods[0] if methods else "The model" }} vs the best baseline (point
estimates); green where it beats every baseline with separated intervals.</p>
<div class="scroll"><table>
<thead><tr><th>metric</th>
{% for bucket in bucket_names %}<th>{{ bucket }}</th>{% endfor %}
</tr></thead>
<tbody>
{% for spec, cells in bucket_rows %}
<tr><td>{{ metric_label(spec) }}</td>
{% for cell in cells %}
<td class="{{ cell.css_class }}" title="best baseline: {{ cell.best_baseline or 'none' }}">
{{- cell.text }}</td>
{% endfor %}
</tr>
{% endfor %}
</tbody></table></div>

<h2>Description metrics</h2>
{% if failures %}<p class="note">{{ failures }}</p>{% endif %}
{% for bucket, rows in description_tables %}
<h3>{{ "All rows" if bucket == "all" else "KPI bucket: " ~ bucket }}</h3>
{{ estimate_table(rows, methods) }}
{% endfor %}

<h2>Behaviour metrics</h2>
{{ estimate_table(behaviour_rows, behaviour_methods) }}

<h2>Verdict per baseline</h2>
<p class="note">Whether {{ methods[0] if methods else "the model" }} is better with separated
intervals (all rows).</p>
<div class="scroll"><table>
<thead><tr><th>metric</th>
{% for baseline in baselines %}<th>{{ baseline }}</th>{% endfor %}
</tr></thead>
<tbody>
{% for row in verdict_rows %}
<tr><td>{{ metric_label(row.spec) }}</td>
{% for baseline in baselines %}
{% set verdict = row.beats.get(baseline) %}
{% if verdict is none %}<td class="na">n/a</td>
{% elif verdict %}<td class="good">separated</td>
{% else %}<td>overlap or worse</td>
{% endif %}
{% endfor %}
</tr>
{% endfor %}
</tbody></table></div>

{% macro description(desc) %}
{% if desc.swatches %}
<div class="palette">
{% for s in desc.swatches %}
<span class="swatch" title="{{ s.name }} {{ s.percent }}%" style="{{ s.style }}"></span>
{% endfor %}
</div>
{% endif %}
<pre>{{ desc.text if desc.text else "(no description)" }}</pre>
{% endmacro %}

<h2>Examples</h2>
{% if not cards %}<p class="note">No examples.</p>{% endif %}
<div class="cards">
{% for card in cards %}
<section class="card">
{% if card.image_base64 %}
<img src="data:image/png;base64,{{ card.image_base64 }}" alt="real image of post {{ card.row.id }}">
{% else %}
<div class="noimg">image not available</div>
{% endif %}
<div class="who">{{ card.row.account }} · target level
<strong>{{ card.row.level }}</strong> · {{ card.row.id }}</div>
<p class="post">{{ card.row.text }}</p>
<div class="desc"><h4>true description</h4>{{ description(card.truth) }}</div>
{% for method, desc in card.predictions %}
<div class="desc"><h4>{{ method }}</h4>{{ description(desc) }}</div>
{% endfor %}
</section>
{% endfor %}
</div>
</main>
</body>
</html>
"""
