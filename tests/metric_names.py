"""Which Prometheus series BOIG's processes export, and which series a PromQL expression reads:
what the alert-rule check and the dashboard checks compare.

The exported names come from the source: every prometheus_client metric built under services/,
instantiated again here (with its own buckets) so that prometheus_client itself adds the
suffixes (``_total``, ``_bucket``, ...), never a list kept by hand. vLLM's metrics, which no
BOIG code defines, are the one list written out: see VLLM_DEFINITIONS.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import prometheus_client

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"

# Added by Prometheus, not by the services: `up` per target, and job/instance on every series.
PROMETHEUS_SERIES = {"up": frozenset[str]()}
TARGET_LABELS = frozenset({"job", "instance"})
METRIC_CLASSES = ("Counter", "Gauge", "Histogram", "Summary")


class MetricDefinition(NamedTuple):
    kind: str
    name: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None


# What the official vLLM image serves on /metrics (vllm/v1/metrics/loggers.py,
# PrometheusStatLogger: the names since 0.9, when gpu_cache_usage_perc became
# kv_cache_usage_perc). Only the ones the dashboards read; nothing here runs vLLM, so these are
# checked by name against this list, never against a live server.
_VLLM_LABELS = ("model_name", "engine")
VLLM_DEFINITIONS = (
    MetricDefinition("Gauge", "vllm:num_requests_running", _VLLM_LABELS),
    MetricDefinition("Gauge", "vllm:num_requests_waiting", _VLLM_LABELS),
    MetricDefinition("Gauge", "vllm:kv_cache_usage_perc", _VLLM_LABELS),
    MetricDefinition("Counter", "vllm:prompt_tokens", _VLLM_LABELS),
    MetricDefinition("Counter", "vllm:generation_tokens", _VLLM_LABELS),
    MetricDefinition("Counter", "vllm:num_preemptions", _VLLM_LABELS),
    MetricDefinition("Histogram", "vllm:time_to_first_token_seconds", _VLLM_LABELS),
    MetricDefinition("Histogram", "vllm:e2e_request_latency_seconds", _VLLM_LABELS),
    MetricDefinition("Histogram", "vllm:request_queue_time_seconds", _VLLM_LABELS),
)


# --- the metrics the services define ----------------------------------------------------------


def _metric_class(call: ast.Call, classes: dict[str, str], modules: set[str]) -> str | None:
    """The prometheus_client class ``call`` constructs, if it constructs one."""
    func = call.func
    if isinstance(func, ast.Name):
        return classes.get(func.id)
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in modules
        and func.attr in METRIC_CLASSES
    ):
        return func.attr
    return None


def _literal(node: ast.expr, constants: dict[str, ast.expr], where: str, what: str) -> object:
    """A literal, or a module-level name bound to one (``buckets=_LATENCY_BUCKETS``)."""
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise AssertionError(f"{where}: {what} must be a literal or a module constant") from None


def _label_names(
    node: ast.expr | None, constants: dict[str, ast.expr], where: str
) -> tuple[str, ...]:
    if node is None:
        return ()
    value = _literal(node, constants, where, "label names")
    assert isinstance(value, list | tuple), f"{where}: label names must be a list"
    return tuple(value)


def _buckets(
    node: ast.expr | None, constants: dict[str, ast.expr], where: str
) -> tuple[float, ...] | None:
    # They decide which series exist: with a bucket bound below 0 prometheus_client exports
    # no _sum (boig_reward_value has none), so a check with the default buckets would be wrong.
    if node is None:
        return None
    value = _literal(node, constants, where, "buckets")
    assert isinstance(value, list | tuple), f"{where}: buckets must be a sequence"
    return tuple(float(bound) for bound in value)


def defined_metrics(source: str, where: str) -> Iterator[MetricDefinition]:
    """Each prometheus_client metric built in ``source``."""
    tree = ast.parse(source)
    classes: dict[str, str] = {}
    modules: set[str] = set()
    constants: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                constants[target.id] = node.value
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
            classes.update(
                {a.asname or a.name: a.name for a in node.names if a.name in METRIC_CLASSES}
            )
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name == "prometheus_client")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kind = _metric_class(node, classes, modules)
        if kind is None:
            continue
        here = f"{where}:{node.lineno}"
        keywords = {k.arg: k.value for k in node.keywords}
        # The check must be able to read every definition, or it would pass blind.
        assert not {"namespace", "subsystem", "unit"} & set(keywords), f"{here}: unsupported"
        name = node.args[0] if node.args else keywords.get("name")
        assert isinstance(name, ast.Constant) and isinstance(name.value, str), (
            f"{here}: a metric name must be a string literal for this check to read it"
        )
        labels = node.args[2] if len(node.args) > 2 else keywords.get("labelnames")
        buckets = (
            _buckets(keywords.get("buckets"), constants, here) if kind == "Histogram" else None
        )
        yield MetricDefinition(kind, name.value, _label_names(labels, constants, here), buckets)


def service_definitions() -> list[MetricDefinition]:
    """Every metric built anywhere under services/."""
    found = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "prometheus_client" in source:
            found.extend(defined_metrics(source, str(path.relative_to(ROOT))))
    return found


def exported_series(
    definitions: list[MetricDefinition] | tuple[MetricDefinition, ...],
) -> tuple[dict[str, frozenset[str]], set[str]]:
    """Each series name prometheus_client exports for ``definitions``, with its label names,
    and the metric family names."""
    registry = prometheus_client.CollectorRegistry()
    for definition in definitions:
        options = {} if definition.buckets is None else {"buckets": definition.buckets}
        metric = getattr(prometheus_client, definition.kind)(
            definition.name, "help", definition.labels, registry=registry, **options
        )
        if definition.labels:
            metric.labels(*definition.labels)  # a child, so that the family has samples to read
    series: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series[sample.name] = series.get(sample.name, frozenset()) | set(sample.labels)
    return series, {family.name for family in registry.collect()}


def bucket_bounds(
    definitions: list[MetricDefinition] | tuple[MetricDefinition, ...],
) -> dict[str, frozenset[str]]:
    """The ``le`` values, as prometheus_client writes them ("60.0", "+Inf"), of each histogram's
    ``_bucket`` series: what an ``le="..."`` matcher may name."""
    registry = prometheus_client.CollectorRegistry()
    for definition in definitions:
        if definition.kind != "Histogram":
            continue
        options = {} if definition.buckets is None else {"buckets": definition.buckets}
        metric = prometheus_client.Histogram(
            definition.name, "help", definition.labels, registry=registry, **options
        )
        if definition.labels:
            metric.labels(*definition.labels)
    bounds: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bounds.setdefault(sample.name, set()).add(sample.labels["le"])
    return {name: frozenset(values) for name, values in bounds.items()}


# --- the series a PromQL expression reads -------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<range>\[[^\]]*\])
      | (?P<number>(?:[0-9]*\.)?[0-9]+(?:[eE][-+]?[0-9]+)?[a-z]*)
      | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<matchers>\{(?:[^{}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})
      | (?P<other>\S)""",
    re.VERBOSE,
)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_GROUPING = ("by", "without")  # `sum by (x) (...)`: sum is an aggregation, not a metric
_MATCHER = re.compile(
    r"""([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)


class Matcher(NamedTuple):
    label: str
    op: str
    value: str


def selector_matchers(expression: str) -> list[tuple[str, tuple[Matcher, ...]]]:
    """(metric name, its label matchers) of every series selector in a PromQL expression or a
    promtool series: function names, grouping labels, strings, ranges and numbers are not
    selectors."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expression)]
    found: list[tuple[str, tuple[Matcher, ...]]] = []
    skip_list = False
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, "")
        if skip_list:
            skip_list = text != ")"
            continue
        if kind == "name" and text in _LABEL_LISTS:
            skip_list = following[1] == "("
        elif kind == "name" and text not in _KEYWORDS and following[1] not in ("(", *_GROUPING):
            labels = following[1] if following[0] == "matchers" else "{}"
            matchers = tuple(
                Matcher(label, op, value[1:-1]) for label, op, value in _MATCHER.findall(labels)
            )
            found.append((text, matchers))
        elif kind == "matchers" and (index == 0 or tokens[index - 1][0] != "name"):
            raise AssertionError(f"a selector without a metric name: {text}")
    return found


def selectors(expression: str) -> list[tuple[str, frozenset[str]]]:
    """(metric name, label names it matches on) of every series selector in ``expression``."""
    return [
        (name, frozenset(m.label for m in matchers))
        for name, matchers in selector_matchers(expression)
    ]


def unknown_series(expression: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """What ``expression`` reads that no process exports: a series name, or a label of one."""
    problems = []
    for name, labels in selectors(expression):
        if name not in exported:
            problems.append(f"{name} is not exported by any service")
        elif extra := labels - exported[name] - TARGET_LABELS:
            problems.append(f"{name} has no label {', '.join(sorted(extra))}")
    return problems


# --- the Grafana dashboards' queries -------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard, for every JSON file deploy/grafana/dashboards.py wrote."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target of ``dashboard``."""
    return [
        (f"{dashboard['uid']} panel {panel['id']} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def label_values_query(query: str) -> tuple[str, str] | None:
    """(selector, label) of a Grafana ``label_values(selector, label)`` variable query."""
    match = _LABEL_VALUES.match(query)
    return None if match is None else (match["selector"] or "", match["label"])


def served_checkpoint_versions(service: str, model: str) -> list[str]:
    """The versions ``boig_checkpoint_info`` says ``service`` serves for ``model`` in this
    process's registry (one once loaded; none when nothing is)."""
    from services.common import metrics

    return [
        sample.labels["version"]
        for family in metrics.REGISTRY.collect()
        if family.name == "boig_checkpoint_info"
        for sample in family.samples
        if sample.labels["service"] == service
        and sample.labels["model"] == model
        and sample.value == 1
    ]
