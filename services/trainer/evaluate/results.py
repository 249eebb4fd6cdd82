"""What an evaluation produces: estimates with confidence intervals per metric, method and
KPI bucket, and example rows for the report. Plain data, so that the report and the tests need
no model."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from services.common.contracts import KpiLevel


class Better(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"


@dataclass(frozen=True)
class MetricSpec:
    key: str
    title: str
    better: Better
    unit: str = ""


DESCRIPTION_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("object_label_iou", "object-label IoU", Better.HIGHER),
    MetricSpec("matched_box_iou", "matched box IoU", Better.HIGHER),
    MetricSpec("caption_cosine", "caption cosine", Better.HIGHER),
    MetricSpec("palette_rgb_distance", "RGB distance (matched colours)", Better.LOWER),
    MetricSpec("coverage_rmse", "colour-coverage RMSE", Better.LOWER),
    MetricSpec("tone_agreement", "tone agreement", Better.HIGHER),
)
BEHAVIOUR_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("level_accuracy", "level accuracy", Better.HIGHER),
    MetricSpec("spearman", "Spearman vs normalized KPI", Better.HIGHER),
)

ALL_BUCKETS = "all"
BUCKETS: tuple[str, ...] = (ALL_BUCKETS, "low", "medium", "high")


FAILED_DESCRIPTION = "(failed)"
"""How an example row shows a description the method failed to give."""


@dataclass(frozen=True)
class LevelPredictions:
    """One method's behaviour simulation over the behaviour rows, in row order."""

    levels: list[KpiLevel]
    scores: list[float]
    """Expected normalized KPI per row (the describer's expected_percentile); Spearman ranks
    these against the real normalized KPI."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval over ``n`` rows."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class ExampleRow:
    """One held-out post as the report shows it: the real image and its description next to
    what each method said the image should look like."""

    id: str
    account: str
    level: str
    text: str
    image_path: Path | None
    truth: str
    """The real image's verbalization (text form)."""
    predictions: dict[str, str]
    """Method name -> its description (text form): empty for an empty description,
    ``FAILED_DESCRIPTION`` when the method failed to give one."""


@dataclass(frozen=True)
class EvaluationResult:
    methods: tuple[str, ...]
    """Display order; the first is the model under evaluation (BoigLLM)."""
    description: dict[str, dict[str, dict[str, Estimate | None]]]
    """metric key -> method -> bucket -> estimate (None: no row where the metric applies)."""
    behaviour: dict[str, dict[str, Estimate | None]]
    """metric key -> method -> estimate over all test rows. Only methods that predict levels:
    the models and the behaviour baselines, which need not appear in ``methods``."""
    examples: tuple[ExampleRow, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    """What was evaluated: checkpoint, dataset version, row counts, seed, confidence, time."""
    description_failures: dict[str, int] = field(default_factory=dict)
    """Method -> content rows it gave no description for (a describer error, or a baseline
    with no evidence for the row); each is scored worst on every description metric."""
    description_repairs: dict[str, int] = field(default_factory=dict)
    """Served method -> descriptions the describer's repairing parser had to change (the
    model wrote something off the description language); 0 is what structured decoding
    is for."""
