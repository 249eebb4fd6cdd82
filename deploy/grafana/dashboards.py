"""Write BOIG's Grafana dashboards, deploy/grafana/dashboards/*.json, from the panels below.

    python deploy/grafana/dashboards.py          # rewrite the JSON files
    python deploy/grafana/dashboards.py --check  # exit 1 where the files differ from this script

Standard library only. Every query reads metrics the services define (services/common/metrics.py,
services/trainer/worker.py), vLLM's own, or Prometheus' `up`: tests/unit/tooling/
test_grafana_dashboards.py checks that, and tests/e2e/test_dashboard_metrics.py checks that the
series exist on a running local stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yml
TAGS = ["boig"]
WIDTH = 24  # Grafana's grid

# Probes answer in microseconds every few seconds (and 503 while a model loads): left out of
# rates, error shares and latencies, as in the alert rules.
API = 'route!~"/health|/metrics"'
RATE = "[$__rate_interval]"
WORKERS_UP = 'up{instance=~"generator(:[0-9]+)?"}'
TRAINER_UP = 'up{instance=~"trainer(:[0-9]+)?"}'

Panel = dict[str, Any]


# --- panels ---------------------------------------------------------------------------------------


def query(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
    if instant:
        target["instant"] = True
    else:
        target["range"] = True
    return target


def _thresholds(steps: Iterable[tuple[str, float | None]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def timeseries(
    title: str,
    description: str,
    *targets: dict[str, Any],
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    max_value: float | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit, "min": 0, "custom": {"fillOpacity": 10}}
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "w": w,
        "h": h,
        "targets": list(targets),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    description: str,
    *targets: dict[str, Any],
    unit: str = "short",
    w: int = 6,
    h: int = 4,
    thresholds: Iterable[tuple[str, float | None]] = (("green", None),),
    mappings: list[dict[str, Any]] | None = None,
    text_mode: str = "value_and_name",
) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "w": w,
        "h": h,
        "targets": list(targets),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": _thresholds(thresholds),
                "mappings": mappings or [],
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": text_mode,
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def heatmap(title: str, description: str, expr: str, *, unit: str, w: int = 12) -> Panel:
    target = query(expr, "{{le}}")
    target["format"] = "heatmap"
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "w": w,
        "h": 8,
        "targets": [target],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "calculate": False,
            "yAxis": {"unit": unit},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "cellGap": 1,
            "tooltip": {"show": True, "yHistogram": True},
        },
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "w": WIDTH, "h": 1, "collapsed": False, "panels": []}


def _layout(panels: list[Panel]) -> list[Panel]:
    """Ids, refIds and grid positions: left to right, a new line when a panel does not fit,
    and every row on a line of its own."""
    placed = []
    x = y = line_height = 0
    for number, panel in enumerate(panels, start=1):
        w, h = panel.pop("w"), panel.pop("h")
        if x + w > WIDTH or (panel["type"] == "row" and x > 0):
            x, y, line_height = 0, y + line_height, 0
        panel = {"id": number, **panel, "gridPos": {"h": h, "w": w, "x": x, "y": y}}
        if panel["type"] != "row":
            panel["datasource"] = DATASOURCE
            for index, target in enumerate(panel["targets"]):
                target["refId"] = chr(ord("A") + index)
        placed.append(panel)
        x, line_height = x + w, max(line_height, h)
    return placed


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    variables: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "title": "BOIG dashboards",
                "tags": TAGS,
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables or []},
        "panels": _layout(panels),
    }


def label_variable(name: str, label: str, metric: str) -> dict[str, Any]:
    definition = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": definition,
        "query": definition,
        "refresh": 2,  # on time range change: a service started since shows up
        "includeAll": False,
        "multi": False,
        "sort": 1,
        "hide": 0,
        "current": {},
        "options": [],
    }


# --- shared expressions -----------------------------------------------------------------------


def quantile(q: float, bucket: str, by: str, matchers: str = "") -> str:
    selector = f"{bucket}{{{matchers}}}" if matchers else bucket
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({selector}{RATE})))"


def error_share(by: str, matchers: str) -> str:
    return (
        f'sum by ({by}) (rate(boig_http_requests_total{{{matchers}, status=~"5.."}}{RATE}))\n'
        f"/\nsum by ({by}) (rate(boig_http_requests_total{{{matchers}}}{RATE}))"
    )


UPSTREAM = "boig_upstream_request_duration_seconds"


def upstream_failures(by: str, matchers: str = "") -> str:
    """Calls to other services per second that did not end ok (error answers, timeouts,
    unreachable upstreams, callers that gave up)."""
    selector = ", ".join(m for m in (matchers, 'outcome!="ok"') if m)
    return f"sum by ({by}) (rate({UPSTREAM}_count{{{selector}}}{RATE}))"


def served_reward_mean(window: str, offset: str = "") -> str:
    # prometheus_client exports no _sum for a histogram with bounds below 0: the mean comes
    # from the (reward + 1) counter, as in the BoigGenerationServedRewardDrop alert.
    shift = f" offset {offset}" if offset else ""
    return (
        "sum by (strategy, reward) "
        f"(increase(boig_generation_served_reward_plus_one_total[{window}]{shift}))\n"
        "/\nsum by (strategy, reward) "
        f"(increase(boig_generation_served_reward_count[{window}]{shift}))\n- 1"
    )


UP_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "down", "color": "red", "index": 0},
            "1": {"text": "up", "color": "green", "index": 1},
        },
    }
]


# --- the dashboards ---------------------------------------------------------------------------


def overview() -> dict[str, Any]:
    panels = [
        stat(
            "Scrape targets",
            "Prometheus' `up` for every target in prometheus.yml: the six BOIG processes and "
            "vLLM. The trainer is down whenever the compose profile `train` is not running.",
            query("up", "{{instance}}", instant=True),
            w=24,
            thresholds=(("red", None), ("green", 1)),
            mappings=UP_MAPPINGS,
        ),
        timeseries(
            "API requests per second by service",
            "Requests each HTTP service answered (probes left out).",
            query(
                f"sum by (service) (rate(boig_http_requests_total{{{API}}}{RATE}))", "{{service}}"
            ),
            unit="reqps",
            w=8,
        ),
        timeseries(
            "5xx share by service",
            "Share of API answers that were 5xx; BoigHighErrorRatio fires above 5% for 10 min.",
            query(error_share("service", API), "{{service}}"),
            unit="percentunit",
            w=8,
        ),
        timeseries(
            "p99 latency by service",
            "Time from request received to response sent; BoigHighLatencyP99 fires above 30 s "
            "(featurizer: 10 s) for 15 min.",
            query(
                quantile(0.99, "boig_http_request_duration_seconds_bucket", "service", API),
                "{{service}}",
            ),
            unit="s",
            w=8,
        ),
        stat(
            "Queued generation jobs",
            "Jobs waiting in the job store, as the generator's sweeper last counted them.",
            query("max(boig_generation_queued_jobs)", "queued", instant=True),
            thresholds=(("green", None), ("orange", 20), ("red", 100)),
        ),
        stat(
            "Oldest queued job",
            "How long the oldest queued job has waited; BoigGenerationOldestJobWaiting fires "
            "past 15 min.",
            query("max(boig_generation_oldest_queued_job_age_seconds)", "waited", instant=True),
            unit="s",
            thresholds=(("green", None), ("orange", 300), ("red", 900)),
        ),
        stat(
            "Generation workers up",
            "Generator targets answering Prometheus. prometheus.yml names one, "
            "generator:8104: with `--scale generator=N` each scrape reaches one replica.",
            query(f"sum({WORKERS_UP})", "workers", instant=True),
            thresholds=(("red", None), ("green", 1)),
        ),
        stat(
            "Checkpoint age",
            "Time since the checkpoint each service serves was published (services on their "
            "base model left out); BoigCheckpointStale warns past 14 days.",
            query(
                "time() - (boig_checkpoint_published_timestamp_seconds > 0)",
                "{{service}}",
                instant=True,
            ),
            unit="s",
            thresholds=(("green", None), ("orange", 14 * 86400)),
        ),
        timeseries(
            "Generation requests at the gateway",
            "submitted: a new job; replayed: an idempotent retry; rejected: the queue was full.",
            query(f"sum by (event) (rate(boig_generation_jobs_total{RATE}))", "{{event}}"),
            unit="reqps",
        ),
        timeseries(
            "Errors returned by type",
            "Typed errors each service returned (one JSON shape; 4xx included).",
            query(
                f"sum by (service, type) (rate(boig_errors_total{RATE}))", "{{service}} {{type}}"
            ),
            unit="reqps",
        ),
        timeseries(
            "Requests refused by a gateway rate limit",
            "429s by limit: requests and polls per API key, failed authentications per "
            "address (and key prefix), failed authentications per address.",
            query(f"sum by (limit) (rate(boig_rate_limited_total{RATE}))", "{{limit}}"),
            unit="reqps",
        ),
        timeseries(
            "Mean served reward (1 h)",
            "Mean reward of the images generation jobs returned, per strategy and reward.",
            query(served_reward_mean("1h"), "{{strategy}} {{reward}}"),
        ),
        timeseries(
            "Upstream call p99 by hop",
            "Time each service waits for the services it calls (gateway -> scorer, scorer -> "
            "featurizer and describer, generator -> describer and scorer, trainer -> describer "
            "and scorer): the slow hop is the one to look at.",
            query(
                quantile(0.99, f"{UPSTREAM}_bucket", "service, upstream"),
                "{{service}} -> {{upstream}}",
            ),
            unit="s",
        ),
        timeseries(
            "Failed upstream calls by hop",
            "Calls to another service that did not end ok, per second, by outcome: "
            "server_error or client_error (the upstream answered one), timeout, unreachable, "
            "canceled (the caller gave up).",
            query(
                upstream_failures("service, upstream, outcome"),
                "{{service}} -> {{upstream}} {{outcome}}",
            ),
            unit="reqps",
        ),
    ]
    return dashboard(
        "boig-overview",
        "BOIG / Overview",
        "Is every process up, are the APIs answering, is the generation queue moving.",
        panels,
    )


def service_red() -> dict[str, Any]:
    this = 'service="$service"'
    api = f"{this}, {API}"
    panels = [
        row("Rate, errors, duration: $service"),
        timeseries(
            "Requests per second by route",
            "Requests this service answered, by route template and method (probes left out).",
            query(
                f"sum by (method, route) (rate(boig_http_requests_total{{{api}}}{RATE}))",
                "{{method}} {{route}}",
            ),
            unit="reqps",
        ),
        timeseries(
            "Responses by status",
            "Every status code this service answered (probes left out).",
            query(f"sum by (status) (rate(boig_http_requests_total{{{api}}}{RATE}))", "{{status}}"),
            unit="reqps",
        ),
        timeseries(
            "5xx share",
            "Share of this service's API answers that were 5xx (alert at 5%).",
            query(error_share("service", api), "5xx"),
            unit="percentunit",
            w=8,
        ),
        timeseries(
            "Errors by type",
            "Typed errors returned: upstream_error points at the service this one calls, "
            "overloaded at too little capacity.",
            query(f"sum by (type) (rate(boig_errors_total{{{this}}}{RATE}))", "{{type}}"),
            unit="reqps",
            w=8,
        ),
        timeseries(
            "Latency p50 / p90 / p99",
            "Time from request received to response sent, over all API routes.",
            *(
                query(
                    quantile(q, "boig_http_request_duration_seconds_bucket", "service", api),
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.9, 0.99)
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "p99 latency by route",
            "Which route is slow.",
            query(
                quantile(0.99, "boig_http_request_duration_seconds_bucket", "route", api),
                "{{route}}",
            ),
            unit="s",
            w=24,
        ),
        row("Calls to other services: $service"),
        timeseries(
            "Upstream call p50 / p99 by upstream and route",
            "Time this service waited for each service it calls, answer read (empty for the "
            "describer and featurizer, which call none).",
            *(
                query(
                    quantile(q, f"{UPSTREAM}_bucket", "upstream, route", this),
                    f"p{round(q * 100)} {{{{upstream}}}} {{{{route}}}}",
                )
                for q in (0.5, 0.99)
            ),
            unit="s",
        ),
        timeseries(
            "Upstream calls by outcome",
            "Calls this service made to each upstream, per second: ok, server_error and "
            "client_error (the upstream's answer), timeout, unreachable, canceled.",
            query(
                f"sum by (upstream, outcome) (rate({UPSTREAM}_count{{{this}}}{RATE}))",
                "{{upstream}} {{outcome}}",
            ),
            unit="reqps",
        ),
        row("Model work: $service"),
        timeseries(
            "Model compute p90 by operation",
            "Compute time of one model call (a whole batch), queueing excluded.",
            query(
                quantile(0.9, "boig_model_compute_seconds_bucket", "operation", this),
                "{{operation}}",
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "Model queue wait p90 by operation",
            "Time a request waited for the model to be free: waiting means too little "
            "capacity, computing (left) a slow model or device.",
            query(
                quantile(0.9, "boig_model_queue_wait_seconds_bucket", "operation", this),
                "{{operation}}",
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "Model work in flight, and dropped",
            "Computations admitted and not yet done; and work cancelled because every caller "
            "waiting for it went away (per second).",
            query(f"sum(boig_model_pending_requests{{{this}}})", "in flight"),
            query(f"sum(rate(boig_model_work_dropped_total{{{this}}}{RATE}))", "dropped/s"),
            w=8,
        ),
        timeseries(
            "Images analysed per second",
            "Images decoded and analysed (featurizer).",
            query(f"sum(rate(boig_images_processed_total{{{this}}}{RATE}))", "images/s"),
            w=8,
        ),
        timeseries(
            "Result cache hit share",
            "Describer result cache: share of lookups answered from the cache.",
            query(
                f'1 - sum by (cache) (rate(boig_cache_lookups_total{{{this}, outcome="miss"}}'
                f"{RATE}))\n/\nsum by (cache) (rate(boig_cache_lookups_total{{{this}}}{RATE}))",
                "{{cache}}",
            ),
            unit="percentunit",
            max_value=1,
            w=8,
        ),
        timeseries(
            "Descriptions repaired",
            "Model outputs the describer had to repair before they parsed (per second): what "
            "the grammar cannot forbid.",
            query(f"sum(rate(boig_verbalization_repairs_total{{{this}}}{RATE}))", "repairs/s"),
            w=8,
        ),
    ]
    return dashboard(
        "boig-service-red",
        "BOIG / Service RED",
        "Rate, errors and duration of one HTTP service, and its model's compute and queue.",
        panels,
        [label_variable("service", "Service", "boig_http_requests_total")],
    )


def queue_and_workers() -> dict[str, Any]:
    panels = [
        stat(
            "Queued jobs",
            "Jobs waiting in the job store (state queued).",
            query("max(boig_generation_queued_jobs)", "queued", instant=True),
            thresholds=(("green", None), ("orange", 20), ("red", 100)),
        ),
        stat(
            "Oldest queued job",
            "Time since the oldest queued job was submitted.",
            query("max(boig_generation_oldest_queued_job_age_seconds)", "waited", instant=True),
            unit="s",
            thresholds=(("green", None), ("orange", 300), ("red", 900)),
        ),
        stat(
            "Generation workers up",
            "Generator workers answering Prometheus.",
            query(f"sum({WORKERS_UP})", "workers", instant=True),
            thresholds=(("red", None), ("green", 1)),
        ),
        stat(
            "Trainer worker",
            "The training worker (compose profile `train`).",
            query(TRAINER_UP, "trainer", instant=True),
            thresholds=(("red", None), ("green", 1)),
            mappings=UP_MAPPINGS,
        ),
        timeseries(
            "Queue length and oldest job",
            "The sweeper's count of queued jobs (left) and the age of the oldest (seconds).",
            query("max(boig_generation_queued_jobs)", "queued jobs"),
            query("max(boig_generation_oldest_queued_job_age_seconds)", "oldest job age (s)"),
        ),
        timeseries(
            "Generation requests at the gateway",
            "submitted, replayed (idempotent retry), rejected (queue full).",
            query(f"sum by (event) (rate(boig_generation_jobs_total{RATE}))", "{{event}}"),
            unit="reqps",
        ),
        timeseries(
            "Jobs finished by outcome",
            "Jobs the workers ended: succeeded, error, canceled.",
            query(
                f"sum by (outcome) (rate(boig_generation_job_seconds_count{RATE}))", "{{outcome}}"
            ),
            unit="reqps",
            w=8,
        ),
        timeseries(
            "Job duration p50 / p99 (succeeded)",
            "Time a worker spent on one job, by strategy.",
            *(
                query(
                    quantile(
                        q, "boig_generation_job_seconds_bucket", "strategy", 'outcome="succeeded"'
                    ),
                    f"p{round(q * 100)} {{{{strategy}}}}",
                )
                for q in (0.5, 0.99)
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "Queue wait p50 / p99",
            "Time from a job's creation to its first start on a worker.",
            *(
                query(
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(boig_generation_queue_wait_seconds_bucket{RATE})))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "Jobs that waited over a minute",
            "Share of the jobs started that had waited more than 60 s; "
            "BoigGenerationQueueWaitLong fires above half for 15 min.",
            query(
                '1 - sum(rate(boig_generation_queue_wait_seconds_bucket{le="60.0"}'
                f"{RATE}))\n/\nsum(rate(boig_generation_queue_wait_seconds_count{RATE}))",
                "waited > 60 s",
            ),
            unit="percentunit",
            max_value=1,
        ),
        heatmap(
            "Job duration distribution",
            "Jobs by how long a worker spent on them (buckets up to the task time limit, "
            "600 s, and past it).",
            f"sum by (le) (increase(boig_generation_job_seconds_bucket{RATE}))",
            unit="s",
        ),
        timeseries(
            "Worker calls to the describer and scorer p99",
            "Time a generation job waits for its description and its scores; the rest of a "
            "job is denoising.",
            query(
                quantile(0.99, f"{UPSTREAM}_bucket", "upstream, route", 'service="generator"'),
                "{{upstream}} {{route}}",
            ),
            unit="s",
        ),
    ]
    return dashboard(
        "boig-queue-workers",
        "BOIG / Queue and workers",
        "The generation queue (job store and broker), the workers that drain it, and the "
        "training worker.",
        panels,
    )


def models_and_checkpoints() -> dict[str, Any]:
    panels = [
        row("Checkpoints"),
        stat(
            "Published checkpoint served",
            "Publish time of the registry checkpoint each process serves; 1970 means a "
            "registry but the base model alone (BoigNoCheckpointLoaded after 30 min).",
            query(
                "boig_checkpoint_published_timestamp_seconds * 1000",
                "{{service}} {{instance}}",
                instant=True,
            ),
            unit="dateTimeFromNow",
            w=12,
        ),
        timeseries(
            "Checkpoint age",
            "Time since the served checkpoint was published; BoigCheckpointStale warns past "
            "14 days.",
            query(
                "time() - (boig_checkpoint_published_timestamp_seconds > 0)",
                "{{service}} {{instance}}",
            ),
            unit="s",
        ),
        stat(
            "Served model versions",
            "The name and version each process serves for each of its models (llm: BoigLLM, "
            "base model and checkpoint; detector; diffusion: the base pipeline; boigsd: the "
            "LoRA boigsd jobs run with), as its answers report them in `models`.",
            query(
                "boig_checkpoint_info == 1",
                "{{service}} {{model}}: {{name}} {{version}}",
                instant=True,
            ),
            w=12,
            h=8,
            text_mode="name",
        ),
        timeseries(
            "Model load time (last load)",
            "How long each model's last load took: files read and verified, moved to the "
            "device, warmed up. A step up after a new checkpoint or a new host is worth a look.",
            query("boig_model_load_seconds", "{{service}} {{model}} {{instance}}"),
            unit="s",
        ),
        row("Models"),
        timeseries(
            "Model compute p90 by service and operation",
            "Compute time of one model call (a batch), queueing excluded.",
            query(
                quantile(0.9, "boig_model_compute_seconds_bucket", "service, operation"),
                "{{service}} {{operation}}",
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "Model queue wait p90 by service and operation",
            "Time a request waited for its model.",
            query(
                quantile(0.9, "boig_model_queue_wait_seconds_bucket", "service, operation"),
                "{{service}} {{operation}}",
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "Model work in flight",
            "Model computations admitted and not yet done, by service.",
            query("sum by (service) (boig_model_pending_requests)", "{{service}}"),
            w=8,
        ),
        row("vLLM (BoigLLM behind the describer)"),
        timeseries(
            "vLLM requests running and waiting",
            "Requests in vLLM's batches, and queued for one.",
            query("sum(vllm:num_requests_running)", "running"),
            query("sum(vllm:num_requests_waiting)", "waiting"),
            w=8,
        ),
        timeseries(
            "vLLM KV cache use",
            "Share of the KV-cache blocks in use; near 1, requests wait or are preempted.",
            query("max(vllm:kv_cache_usage_perc)", "KV cache"),
            query(f"sum(rate(vllm:num_preemptions_total{RATE}))", "preemptions/s"),
            unit="percentunit",
            w=8,
        ),
        timeseries(
            "vLLM tokens per second",
            "Prompt tokens read (the describer's prompt log-probabilities among them) and "
            "tokens generated.",
            query(f"sum(rate(vllm:prompt_tokens_total{RATE}))", "prompt"),
            query(f"sum(rate(vllm:generation_tokens_total{RATE}))", "generated"),
            w=8,
        ),
        timeseries(
            "vLLM latency p90",
            "Time to first token, whole request, and time queued inside vLLM.",
            query(
                quantile(0.9, "vllm:time_to_first_token_seconds_bucket", "model_name"),
                "first token",
            ),
            query(
                quantile(0.9, "vllm:e2e_request_latency_seconds_bucket", "model_name"), "request"
            ),
            query(quantile(0.9, "vllm:request_queue_time_seconds_bucket", "model_name"), "queued"),
            unit="s",
            w=24,
        ),
        row("Training"),
        stat(
            "Trainer worker",
            "The training worker (compose profile `train`).",
            query(TRAINER_UP, "trainer", instant=True),
            thresholds=(("red", None), ("green", 1)),
            mappings=UP_MAPPINGS,
        ),
        stat(
            "Epochs done",
            "Epochs done by the run in progress.",
            query("max(boig_trainer_epoch)", "epoch", instant=True),
            w=6,
        ),
        timeseries(
            "Approximate KL per epoch",
            "How far the last epoch moved the policy from the one that sampled it.",
            query("boig_trainer_approx_kl", "{{instance}}"),
        ),
    ]
    return dashboard(
        "boig-models",
        "BOIG / Models and checkpoints",
        "Which checkpoint each process serves and how old it is, model compute and queueing, "
        "vLLM, and training progress.",
        panels,
    )


def rewards() -> dict[str, Any]:
    panels = [
        timeseries(
            "Mean served reward (1 h)",
            "Mean reward of the images generation jobs returned (kept images only), per "
            "strategy and reward.",
            query(served_reward_mean("1h"), "{{strategy}} {{reward}}"),
        ),
        timeseries(
            "Mean served reward: last 6 h against the 7 days before",
            "The two windows BoigGenerationServedRewardDrop compares (it fires 0.1 below).",
            query(served_reward_mean("6h"), "6 h {{strategy}} {{reward}}"),
            query(served_reward_mean("7d", "6h"), "7 d before {{strategy}} {{reward}}"),
        ),
        timeseries(
            "Served reward p10 / p50 / p90",
            "Quantiles of the served images' rewards, per strategy and reward.",
            *(
                query(
                    quantile(q, "boig_generation_served_reward_bucket", "strategy, reward"),
                    f"p{round(q * 100)} {{{{strategy}}}} {{{{reward}}}}",
                )
                for q in (0.1, 0.5, 0.9)
            ),
        ),
        timeseries(
            "Images served per second",
            "Images generation jobs returned, by strategy.",
            query(
                f"sum by (strategy) (rate(boig_generation_served_reward_count{RATE}))",
                "{{strategy}}",
            ),
        ),
        heatmap(
            "Served reward distribution",
            "Served images by reward (all strategies and rewards).",
            f"sum by (le) (increase(boig_generation_served_reward_bucket{RATE}))",
            unit="short",
        ),
        heatmap(
            "Scored reward distribution",
            "Every creative the scorer scored, best-of-n candidates the generator discards "
            "included.",
            f"sum by (le) (increase(boig_reward_value_bucket{RATE}))",
            unit="short",
        ),
        timeseries(
            "Scored reward median by reward",
            "Median reward the scorer computed, per reward.",
            query(quantile(0.5, "boig_reward_value_bucket", "reward"), "{{reward}}"),
        ),
        timeseries(
            "Creatives scored per second by reward",
            "Scoring volume behind the distributions.",
            query(f"sum by (reward) (rate(boig_reward_value_count{RATE}))", "{{reward}}"),
        ),
        timeseries(
            "Trainer: mean reward per epoch",
            "Mean reward of the training worker's last epoch (DDPO).",
            query("boig_trainer_reward_mean", "{{instance}}"),
            w=24,
        ),
    ]
    return dashboard(
        "boig-rewards",
        "BOIG / Rewards",
        "Rewards of the images served and of everything scored, and the trainer's reward.",
        panels,
    )


DASHBOARDS = {
    "overview.json": overview,
    "service-red.json": service_red,
    "queue-workers.json": queue_and_workers,
    "models-checkpoints.json": models_and_checkpoints,
    "rewards.json": rewards,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = parser.parse_args(argv)
    wanted = render()
    present = {path.name for path in OUT.glob("*.json")}
    stale = sorted(
        name
        for name in wanted.keys() | present
        if name not in wanted
        or not (OUT / name).is_file()
        or (OUT / name).read_text() != wanted[name]
    )
    if args.check:
        for name in stale:
            print(f"{OUT / name} differs from deploy/grafana/dashboards.py", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name in stale:
        if name in wanted:
            (OUT / name).write_text(wanted[name])
        else:
            (OUT / name).unlink()
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
