"""The Prometheus alert rules: promtool accepts them and the config, their unit tests pass, every
alert is shown both firing and quiet, and they read only metrics and labels the services export.

The exported names come from the source: every prometheus_client metric built under services/,
instantiated again here so that prometheus_client itself adds the suffixes (``_total``,
``_bucket``, ...), never a list kept by hand.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from services.common import metrics
from tests.servers import server_missing

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*_test.yml"))

# Added by Prometheus, not by the services: `up` per target, and job/instance on every series.
PROMETHEUS_SERIES = {"up": frozenset[str]()}
TARGET_LABELS = frozenset({"job", "instance"})
METRIC_CLASSES = ("Counter", "Gauge", "Histogram", "Summary")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        server_missing("promtool is not installed (apt-get install prometheus provides it)")
    return path


def run_promtool(*args: str) -> None:
    result = subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


def test_promtool_accepts_the_rules() -> None:
    run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))


def test_promtool_accepts_the_config_and_the_rules_it_loads() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name]  # resolved beside prometheus.yml
    run_promtool("check", "config", str((PROMETHEUS / "prometheus.yml").relative_to(ROOT)))


def test_the_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no deploy/prometheus/tests/*_test.yml"
    run_promtool("test", "rules", *(str(path.relative_to(ROOT)) for path in RULE_TESTS))


def test_a_missing_promtool_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool is not installed"):
        promtool()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="promtool is not installed"):
        promtool()


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, list[bool]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for rule in alert_rules():
        name = rule["alert"]
        assert True in cases.get(name, []), f"{name} is never tested firing"
        assert False in cases.get(name, []), f"{name} is never tested quiet"


def test_every_alert_has_a_duration_a_severity_and_says_which_service() -> None:
    for rule in alert_rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        for text in (rule["annotations"]["summary"], rule["annotations"]["description"]):
            assert "{{ $labels.service }}" in text or rule["labels"].get("service"), rule["alert"]


# --- the metrics the services export ---------------------------------------------------------


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


def _label_names(node: ast.expr | None, where: str) -> tuple[str, ...]:
    if node is None:
        return ()
    try:
        value = ast.literal_eval(node)
    except ValueError:
        value = None
    assert isinstance(value, list | tuple), f"{where}: label names must be a literal list"
    return tuple(value)


def defined_metrics(source: str, where: str) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(class, name, label names) of each prometheus_client metric built in ``source``."""
    tree = ast.parse(source)
    classes: dict[str, str] = {}
    modules: set[str] = set()
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
        yield kind, name.value, _label_names(labels, here)


def exported_series(
    definitions: list[tuple[str, str, tuple[str, ...]]],
) -> tuple[dict[str, frozenset[str]], set[str]]:
    """Each series name prometheus_client exports for ``definitions``, with its label names,
    and the metric family names."""
    registry = prometheus_client.CollectorRegistry()
    for kind, name, labels in definitions:
        metric = getattr(prometheus_client, kind)(name, "help", labels, registry=registry)
        if labels:
            metric.labels(*labels)  # a child, so that the family has samples to read
    series: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series[sample.name] = series.get(sample.name, frozenset()) | set(sample.labels)
    return series, {family.name for family in registry.collect()}


def service_definitions() -> list[tuple[str, str, tuple[str, ...]]]:
    found = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "prometheus_client" in source:
            found.extend(defined_metrics(source, str(path.relative_to(ROOT))))
    return found


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    series, _ = exported_series(service_definitions())
    return {**series, **PROMETHEUS_SERIES}


def test_the_scan_finds_every_metric_of_the_shared_registry() -> None:
    _, families = exported_series(service_definitions())
    shared = {family.name for family in metrics.REGISTRY.collect()}
    assert shared and shared <= families
    # and the worker's own gauges, defined outside services/common/metrics.py
    assert {"boig_trainer_epoch", "boig_trainer_reward_mean"} <= families


# --- the metrics the rules read -----------------------------------------------------------------

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
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def selectors(expression: str) -> list[tuple[str, frozenset[str]]]:
    """(metric name, label names it matches on) of every series selector in a PromQL
    expression or a promtool series: function names, grouping labels, strings, ranges and
    numbers are not selectors."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expression)]
    found: list[tuple[str, frozenset[str]]] = []
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
            unquoted = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', labels)
            found.append((text, frozenset(_MATCHER.findall(unquoted))))
        elif kind == "matchers" and (index == 0 or tokens[index - 1][0] != "name"):
            raise AssertionError(f"a selector without a metric name: {text}")
    return found


def unknown_series(expression: str, exported: dict[str, frozenset[str]]) -> list[str]:
    problems = []
    for name, labels in selectors(expression):
        if name not in exported:
            problems.append(f"{name} is not exported by any service")
        elif extra := labels - exported[name] - TARGET_LABELS:
            problems.append(f"{name} has no label {', '.join(sorted(extra))}")
    return problems


def test_the_selector_parser_reads_names_and_matchers() -> None:
    expression = """
      histogram_quantile(0.99, sum by (service, le) (rate(a_bucket{service!="x", le=~"1|2"}[5m])))
        > 30 or label_replace(up == 0, "service", "$1", "instance", "(.*)")
        and on (instance) max_over_time(b[24h]) == 1 - c offset 1h * 14 * 86400 + time()"""
    assert selectors(expression) == [
        ("a_bucket", frozenset({"service", "le"})),
        ("up", frozenset()),
        ("b", frozenset()),
        ("c", frozenset()),
    ]


def test_the_check_sees_an_unknown_metric_and_an_unknown_label(
    exported: dict[str, frozenset[str]],
) -> None:
    assert unknown_series('rate(boig_http_requests_total{status="500"}[5m])', exported) == []
    assert unknown_series("rate(boig_http_requests[5m])", exported) == [
        "boig_http_requests is not exported by any service"  # the counter's name without _total
    ]
    assert unknown_series('boig_reward_value_bucket{service="scorer"}', exported) == [
        "boig_reward_value_bucket has no label service"
    ]


def test_the_rules_read_only_exported_metrics_and_labels(
    exported: dict[str, frozenset[str]],
) -> None:
    problems = []
    for rule in alert_rules():
        problems += [f"{rule['alert']}: {p}" for p in unknown_series(rule["expr"], exported)]
    assert problems == []


def test_the_rule_tests_feed_series_the_services_export(
    exported: dict[str, frozenset[str]],
) -> None:
    problems = []
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for series in test.get("input_series", []):
                problems += [
                    f"{path.name}: {p}" for p in unknown_series(series["series"], exported)
                ]
    assert problems == []
