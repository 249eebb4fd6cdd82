"""The evaluation report: interval verdicts, the printed tables and the self-contained HTML."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from services.trainer.evaluate.report import format_estimate, print_report, verdicts, write_html
from services.trainer.evaluate.results import (
    Better,
    Estimate,
    EvaluationResult,
    ExampleRow,
)

BOIG = "BoigLLM"
FEW_SHOT = "base model (few-shot)"
NEAREST = "nearest past image"
METHODS = (BOIG, FEW_SHOT, NEAREST)
BUCKETS = ("all", "low", "medium", "high")

TRUTH = "caption: a runner\ncolors: navy (20,30,90) 41%; white (245,245,245) 30%\ntones: cool, dark"
BOIG_PREDICTION = "colors: navy (22,28,95) 45%; white (240,240,240) 25%\ntones: cool, dark"
HOSTILE_PREDICTION = "colors: red (200,0,0) 50%\n<script>alert('x')</script>"


def _est(value: float, low: float, high: float, n: int = 50) -> Estimate:
    return Estimate(value=value, low=low, high=high, n=n)


def _per_bucket(estimate: Estimate | None) -> dict[str, Estimate | None]:
    return dict.fromkeys(BUCKETS, estimate)


def _result(tmp_path: Path) -> EvaluationResult:
    description = {
        # BoigLLM separated from both baselines (higher is better).
        "object_label_iou": {
            BOIG: _per_bucket(_est(0.60, 0.55, 0.65)),
            FEW_SHOT: _per_bucket(_est(0.40, 0.35, 0.45)),
            NEAREST: _per_bucket(_est(0.50, 0.45, 0.52)),
        },
        # Separated from the few-shot baseline, overlapping the nearest image.
        "matched_box_iou": {
            BOIG: _per_bucket(_est(0.70, 0.66, 0.74)),
            FEW_SHOT: _per_bucket(_est(0.50, 0.45, 0.55)),
            NEAREST: _per_bucket(_est(0.68, 0.63, 0.73)),
        },
        # No captions in the data: every estimate is missing.
        "caption_cosine": {method: _per_bucket(None) for method in METHODS},
        # Lower is better: separated from few-shot, nearest image has no estimate.
        "palette_rgb_distance": {
            BOIG: _per_bucket(_est(20.0, 18.0, 22.0)),
            FEW_SHOT: _per_bucket(_est(40.0, 35.0, 45.0)),
            NEAREST: _per_bucket(None),
        },
        # Lower is better and BoigLLM is worse than both.
        "coverage_rmse": {
            BOIG: _per_bucket(_est(0.30, 0.28, 0.32)),
            FEW_SHOT: _per_bucket(_est(0.10, 0.08, 0.12)),
            NEAREST: _per_bucket(_est(0.20, 0.18, 0.22)),
        },
    }
    behaviour = {
        "level_accuracy": {BOIG: _est(0.55, 0.50, 0.60), FEW_SHOT: _est(0.34, 0.30, 0.38)},
        "spearman": {BOIG: _est(0.20, 0.10, 0.30), FEW_SHOT: _est(0.15, 0.05, 0.25)},
    }
    image_path = tmp_path / "images" / "post-1.png"
    image_path.parent.mkdir()
    Image.new("RGB", (4, 4), (20, 30, 90)).save(image_path)
    examples = (
        ExampleRow(
            id="post-1",
            account="acme",
            level="high",
            text="Summer sale & more",
            image_path=image_path,
            truth=TRUTH,
            predictions={BOIG: BOIG_PREDICTION, FEW_SHOT: HOSTILE_PREDICTION, NEAREST: ""},
        ),
        ExampleRow(
            id="post-2",
            account="globex",
            level="low",
            text="New arrivals",
            image_path=tmp_path / "images" / "missing.png",
            truth=TRUTH,
            predictions={BOIG: BOIG_PREDICTION},
        ),
    )
    meta = {
        "checkpoint": "boigllm-lora-7",
        "dataset": "world-v3",
        "rows": "240",
        "confidence": "95%",
    }
    return EvaluationResult(METHODS, description, behaviour, examples, meta)


def test_format_estimate_shows_value_and_interval() -> None:
    assert format_estimate(_est(0.4123, 0.38, 0.4449)) == "0.412 [0.380, 0.445]"
    assert format_estimate(_est(12.345, 10.0, 14.5), digits=1) == "12.3 [10.0, 14.5]"
    assert format_estimate(None) == "n/a"


def test_verdicts_need_separated_intervals(tmp_path: Path) -> None:
    result = verdicts(_result(tmp_path))

    assert result["object_label_iou"] == {FEW_SHOT: True, NEAREST: True}
    assert result["matched_box_iou"] == {FEW_SHOT: True, NEAREST: False}
    assert result["palette_rgb_distance"] == {FEW_SHOT: True, NEAREST: None}
    assert result["coverage_rmse"] == {FEW_SHOT: False, NEAREST: False}
    assert result["caption_cosine"] == {FEW_SHOT: None, NEAREST: None}
    assert result["tone_agreement"] == {FEW_SHOT: None, NEAREST: None}  # absent from the data


def test_verdicts_cover_behaviour_metrics(tmp_path: Path) -> None:
    result = verdicts(_result(tmp_path))

    # Only methods that predict levels are compared on behaviour: not the nearest image.
    assert result["level_accuracy"] == {FEW_SHOT: True}
    assert result["spearman"] == {FEW_SHOT: False}


MAJORITY = "majority class"
PRIOR = "brand level prior"


def _with_behaviour_baselines(tmp_path: Path) -> EvaluationResult:
    base = _result(tmp_path)
    behaviour = {
        "level_accuracy": {
            **base.behaviour["level_accuracy"],
            MAJORITY: _est(0.60, 0.56, 0.64),
            PRIOR: _est(0.40, 0.35, 0.45),
        },
        "spearman": {**base.behaviour["spearman"], MAJORITY: None, PRIOR: _est(-0.05, -0.15, 0.05)},
    }
    return replace(base, behaviour=behaviour)


def test_behaviour_table_shows_behaviour_only_baselines(tmp_path: Path) -> None:
    result = _with_behaviour_baselines(tmp_path)
    console = Console(record=True, width=200)

    print_report(result, console=console)
    text = console.export_text()

    behaviour = text[text.index("Behaviour metrics") :]
    header = next(line for line in behaviour.splitlines() if "┃ metric" in line)
    assert [name in header for name in (BOIG, FEW_SHOT, MAJORITY, PRIOR)] == [True] * 4
    assert NEAREST not in header
    description = text[: text.index("Behaviour metrics")]
    assert MAJORITY not in description
    assert verdicts(result)["level_accuracy"] == {FEW_SHOT: True, MAJORITY: False, PRIOR: True}
    assert verdicts(result)["spearman"] == {FEW_SHOT: False, MAJORITY: None, PRIOR: True}


def test_write_html_shows_behaviour_only_baselines(tmp_path: Path) -> None:
    html = write_html(_with_behaviour_baselines(tmp_path), tmp_path / "r.html").read_text()

    behaviour = html[html.index("<h2>Behaviour metrics</h2>") : html.index("<h2>Verdict")]
    assert f"<th>{PRIOR}</th>" in behaviour and f"<th>{NEAREST}</th>" not in behaviour
    assert "0.400 [0.350, 0.450]" in behaviour
    verdict = html[html.index("<h2>Verdict") : html.index("<h2>Examples")]
    assert f"<th>{MAJORITY}</th>" in verdict and f"<th>{NEAREST}</th>" in verdict


def test_report_prints_failure_counts_and_failed_examples(tmp_path: Path) -> None:
    base = _result(tmp_path)
    failed = replace(base.examples[0], predictions={BOIG: BOIG_PREDICTION, FEW_SHOT: "(failed)"})
    result = replace(
        base,
        examples=(failed,),
        description_failures={BOIG: 0, FEW_SHOT: 7, NEAREST: 0},
        meta={**base.meta, "content rows": "240"},
    )
    console = Console(record=True, width=200)

    print_report(result, console=console)
    html = write_html(result, tmp_path / "r.html").read_text()

    line = "failed descriptions of 240 rows (each scored worst on every metric): "
    counts = f"{BOIG} 0, {FEW_SHOT} 7, {NEAREST} 0"
    assert line + counts in console.export_text()
    assert line + counts in html
    assert "<pre>(failed)</pre>" in html


@pytest.mark.parametrize(
    ("ours", "theirs", "better", "expected"),
    [
        (_est(0.6, 0.55, 0.65), _est(0.5, 0.45, 0.54), Better.HIGHER, True),
        (_est(0.6, 0.55, 0.65), _est(0.5, 0.45, 0.55), Better.HIGHER, False),  # touching
        (_est(10, 8, 12), _est(20, 13, 25), Better.LOWER, True),
        (_est(10, 8, 12), _est(20, 12, 25), Better.LOWER, False),
        (_est(20, 13, 25), _est(10, 8, 12), Better.HIGHER, True),
        (_est(20, 13, 25), _est(10, 8, 12), Better.LOWER, False),
    ],
)
def test_verdict_follows_the_better_direction(
    ours: Estimate, theirs: Estimate, better: Better, expected: bool
) -> None:
    key = "object_label_iou" if better is Better.HIGHER else "palette_rgb_distance"
    result = EvaluationResult(
        methods=(BOIG, FEW_SHOT),
        description={key: {BOIG: {"all": ours}, FEW_SHOT: {"all": theirs}}},
        behaviour={},
    )

    assert verdicts(result)[key][FEW_SHOT] is expected


def test_print_report_shows_every_metric_and_the_meta(tmp_path: Path) -> None:
    console = Console(record=True, width=160)

    print_report(_result(tmp_path), console=console)
    text = console.export_text()

    for title in ("object-label IoU", "RGB distance (matched colours)", "level accuracy"):
        assert title in text
    assert "caption cosine" in text
    assert "n/a (no captions in the data)" in text
    assert "0.600 [0.550, 0.650]" in text
    assert "0.600 vs 0.500" in text  # per-bucket: BoigLLM vs best baseline
    assert "BoigLLM beats all baselines?" in text
    assert "checkpoint: boigllm-lora-7" in text
    assert "confidence: 95%" in text


def test_print_report_summarizes_wins_per_metric(tmp_path: Path) -> None:
    console = Console(record=True, width=160)

    print_report(_result(tmp_path), console=console)
    lines = console.export_text().splitlines()

    def summary(title: str) -> str:
        line = next(line for line in lines if title in line)
        return line.split("│")[-2].strip()

    assert summary("object-label IoU") == "yes"
    assert summary("matched box IoU") == "partial"
    assert summary("colour-coverage RMSE") == "no"
    assert summary("RGB distance") == "yes (1 of 2 compared)"
    assert summary("level accuracy") == "yes"  # behaviour compares level predictors only


def test_write_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    out = tmp_path / "report" / "evaluation.html"

    written = write_html(_result(tmp_path), out)
    html = out.read_text(encoding="utf-8")

    assert written == out
    assert "http://" not in html and "https://" not in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "Summer sale &amp; more" in html
    assert "n/a (no captions in the data)" in html


def test_write_html_embeds_the_real_image_and_flags_a_missing_one(tmp_path: Path) -> None:
    out = tmp_path / "evaluation.html"

    html = write_html(_result(tmp_path), out).read_text(encoding="utf-8")

    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 1
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as image:
        assert image.size == (4, 4)
        assert image.convert("RGB").getpixel((0, 0)) == (20, 30, 90)
    assert "image not available" in html


def test_write_html_converts_other_formats_and_skips_large_files(tmp_path: Path) -> None:
    jpeg, large = tmp_path / "post.jpg", tmp_path / "large.png"
    Image.new("RGB", (3, 2), (200, 20, 30)).save(jpeg, format="JPEG")
    large.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024))
    base = _result(tmp_path)
    rows = tuple(replace(base.examples[0], id=p.stem, image_path=p) for p in (jpeg, large))

    html = write_html(replace(base, examples=rows), tmp_path / "r.html").read_text()

    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 1
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as image:
        assert (image.format, image.size) == ("PNG", (3, 2))
    assert html.count("image not available") == 1


def test_write_html_draws_palettes_as_swatches(tmp_path: Path) -> None:
    html = write_html(_result(tmp_path), tmp_path / "evaluation.html").read_text()

    assert 'style="width: 41.0%; background: rgb(20, 30, 90)"' in html
    assert 'style="width: 45.0%; background: rgb(22, 28, 95)"' in html
    assert 'style="width: 50.0%; background: rgb(200, 0, 0)"' in html
    assert "<pre>caption: a runner\ncolors: navy (20,30,90) 41%; white (245" in html


def test_write_html_marks_separated_verdicts(tmp_path: Path) -> None:
    html = write_html(_result(tmp_path), tmp_path / "evaluation.html").read_text()

    assert html.count('<td class="good">separated</td>') == 5  # see the verdicts tests
    assert "<td>overlap or worse</td>" in html


def test_write_html_replaces_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "evaluation.html"
    out.write_text("old report")

    write_html(_result(tmp_path), out)

    assert [p.name for p in folder.iterdir()] == ["evaluation.html"]
    assert out.read_text().startswith("<!doctype html>")


def test_write_json_round_trips_every_estimate(tmp_path: Path) -> None:
    import json

    from services.trainer.evaluate.report import write_json

    result = _result(tmp_path)
    data = json.loads(write_json(result, tmp_path / "results.json").read_text())

    assert tuple(data["methods"]) == result.methods
    boig = data["description"]["object_label_iou"][BOIG]["all"]
    assert boig == {"value": 0.60, "low": 0.55, "high": 0.65, "n": 50}
    assert all(isinstance(e["image_path"], str | None) for e in data["examples"])
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".json"] == ["results.json"]
