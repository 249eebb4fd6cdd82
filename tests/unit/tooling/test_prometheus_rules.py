"""The Prometheus alert rules: promtool accepts them and the config, their unit tests pass, every
alert is shown both firing and quiet, and they read only metrics and labels the services export
(read from the source by tests/metric_names.py, which the dashboard checks share).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from services.common import metrics
from tests.metric_names import (
    PROMETHEUS_SERIES,
    ROOT,
    bucket_bounds,
    dashboard_queries,
    defined_metrics,
    exported_series,
    load_dashboards,
    selector_matchers,
    selectors,
    service_definitions,
    unknown_series,
)
from tests.servers import promtool

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*_test.yml"))


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


def test_the_scan_exports_the_series_the_shared_registry_does() -> None:
    # Series, not only families: the buckets are read too, and a histogram with a bound below
    # 0 (the reward histograms) has no _sum, which an expression must not read.
    scanned, _ = exported_series(service_definitions())
    histograms = (metrics.REWARD, metrics.SERVED_REWARD, metrics.HTTP_LATENCY)
    placeholders = [metric._labelnames for metric in histograms]  # values nobody else uses
    for metric, values in zip(histograms, placeholders, strict=True):
        metric.labels(*values)
    try:
        live = {s.name for family in metrics.REGISTRY.collect() for s in family.samples}
    finally:
        for metric, values in zip(histograms, placeholders, strict=True):
            metric.remove(*values)
    assert live and live <= set(scanned)
    assert "boig_reward_value_sum" not in scanned and "boig_reward_value_count" in scanned
    assert "boig_http_request_duration_seconds_sum" in scanned


def test_the_scan_reads_buckets_from_module_constants() -> None:
    source = (
        "from prometheus_client import Histogram\n"
        "_BOUNDS = (-1, 0, 1)\n"
        "H = Histogram('h_seconds', 'help', ['a'], buckets=_BOUNDS)\n"
    )
    [definition] = defined_metrics(source, "example.py")
    assert definition.buckets == (-1.0, 0.0, 1.0)
    series, _ = exported_series([definition])
    assert "h_seconds_count" in series and "h_seconds_sum" not in series


# --- the metrics the rules read -----------------------------------------------------------------


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


def test_every_bucket_a_rule_or_panel_names_is_one_the_histogram_has() -> None:
    """An ``le="60.0"`` that is no bound of the histogram matches nothing: the expression is
    0 or empty for ever, and nothing else would notice (a rule test feeds its own series)."""
    bounds = bucket_bounds(service_definitions())
    expressions = [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    expressions += [
        (where, expr)
        for dashboard in load_dashboards().values()
        for where, expr in dashboard_queries(dashboard)
    ]
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            expressions += [(path.name, s["series"]) for s in test.get("input_series", [])]
    named = []
    for where, expression in expressions:
        for name, matchers in selector_matchers(expression):
            for matcher in matchers:
                if matcher.label == "le" and matcher.op == "=":
                    named.append((where, name, matcher.value))
    assert any(value == "60.0" for _, _, value in named)  # BoigGenerationQueueWaitLong's
    problems = [
        f"{where}: {name} has no bucket le={value!r}"
        for where, name, value in named
        if name in bounds and value not in bounds[name]
    ]
    assert problems == []
    # Job-sized waits are told apart up to the task time limit (600 s) and beyond.
    assert {"60.0", "600.0", "+Inf"} <= bounds["boig_generation_queue_wait_seconds_bucket"]
