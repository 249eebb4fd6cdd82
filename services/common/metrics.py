"""Every Prometheus metric BOIG exports, defined in one place.

Names carry the ``boig_`` prefix and base units; labels come from small fixed sets
(service, route template, method, status class, operation), never ids or user text. The one
exception is boig_checkpoint_info's name and version: one series per loaded model, replaced
when another version loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A call to another service: the request buckets, then on to the longest client timeout (the
# gateway's and generator's 180 s, the trainer's 300 s and 600 s), so that a hop that times
# out lands in a bucket of its own rather than in +Inf beside every slow one.
_UPSTREAM_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300, 600,
)  # fmt: skip
# A generation job and its wait in the queue: up to the task time limit
# (BOIG_QUEUE_TASK_TIME_LIMIT_SECONDS, 600 s) and past it, since a queued job may wait longer
# than any one job runs (BoigGenerationOldestJobWaiting fires at 15 minutes; a lost task is
# sent again after an hour). 60 s stays a bound: BoigGenerationQueueWaitLong reads le="60.0".
_JOB_BUCKETS = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300, 450, 600, 900, 1800, 3600,
)  # fmt: skip
# Rewards lie in [0, 1] (match, likelihood) or [-1, 1] (contrastive): coarse below 0, where
# only contrastive goes, and a tenth wide above it.
_REWARD_BUCKETS = (-1, -0.5, -0.25, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1)

HTTP_REQUESTS = Counter(
    "boig_http_requests_total",
    "HTTP requests served, by route template and status code.",
    ["service", "route", "method", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "boig_http_request_duration_seconds",
    "Time from request received to response sent.",
    ["service", "route", "method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ERRORS = Counter(
    "boig_errors_total",
    "Errors returned to callers, by error type.",
    ["service", "type"],
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "boig_upstream_request_duration_seconds",
    "Time one call to another BOIG service took, from request sent to answer read, by calling "
    "service, called service, route and outcome (ok, client_error, server_error, timeout, "
    "unreachable, canceled).",
    ["service", "upstream", "route", "outcome"],
    buckets=_UPSTREAM_BUCKETS,
    registry=REGISTRY,
)
MODEL_SECONDS = Histogram(
    "boig_model_compute_seconds",
    "Compute time of one model call (a whole batch), excluding queueing.",
    ["service", "operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
PENDING_REQUESTS = Gauge(
    "boig_model_pending_requests",
    "Model computations admitted and not yet done (running or queued for the model).",
    ["service"],
    registry=REGISTRY,
)
DROPPED_WORK = Counter(
    "boig_model_work_dropped_total",
    "Model work cancelled because every caller waiting for it went away.",
    ["service"],
    registry=REGISTRY,
)
MODEL_QUEUE_SECONDS = Histogram(
    "boig_model_queue_wait_seconds",
    "Time a request waited for the model to be free.",
    ["service", "operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
IMAGES_PROCESSED = Counter(
    "boig_images_processed_total",
    "Images decoded and analysed.",
    ["service"],
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "boig_cache_lookups_total",
    "Result cache lookups, by outcome (hit or miss).",
    ["service", "cache", "outcome"],
    registry=REGISTRY,
)
REPAIRS = Counter(
    "boig_verbalization_repairs_total",
    "Model outputs that needed repairs before they parsed.",
    ["service"],
    registry=REGISTRY,
)
REWARD = Histogram(
    "boig_reward_value",
    "Distribution of reward totals computed by the scorer: every creative scored, "
    "best-of-n candidates the generator then discards included.",
    ["reward"],
    buckets=_REWARD_BUCKETS,
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "boig_rate_limited_total",
    "Requests refused by a rate limit, by limit (requests, polls, auth_failures).",
    ["limit"],
    registry=REGISTRY,
)
GENERATION_JOBS = Counter(
    "boig_generation_jobs_total",
    "Generation requests at the gateway: submitted (a new job), replayed (an idempotent "
    "retry), rejected (queue full).",
    ["event"],
    registry=REGISTRY,
)
FEEDBACK_RECORDS = Counter(
    "boig_feedback_records_total",
    "KPI feedback at the gateway: created (a new record), replayed (the same observation "
    "again), corrected (a correction applied), conflict (another value, refused).",
    ["outcome"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "boig_generation_job_seconds",
    "Time a worker spent on one job, by strategy and how it ended.",
    ["strategy", "outcome"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
SERVED_REWARD = Histogram(
    "boig_generation_served_reward",
    "Reward of each image a generation job returned to its client (the kept images of a "
    "succeeded job; best-of-n candidates left out), by strategy and reward.",
    ["strategy", "reward"],
    buckets=_REWARD_BUCKETS,
    registry=REGISTRY,
)
# Its mean: with bucket bounds below 0, prometheus_client exports no _sum, and a sum of
# contrastive rewards would fall (which increase() reads as a restart). Every reward is at
# least -1, so the sum of reward + 1 only grows: mean = increase(this) / increase(_count) - 1.
SERVED_REWARD_PLUS_ONE = Counter(
    "boig_generation_served_reward_plus_one_total",
    "Sum of (reward + 1) over the images boig_generation_served_reward counts; the mean "
    "served reward over a window is increase(this) / increase(its _count) - 1.",
    ["strategy", "reward"],
    registry=REGISTRY,
)
QUEUED_JOBS = Gauge(
    "boig_generation_queued_jobs",
    "Generation jobs waiting in the queue (state queued in the job store), as the generator's "
    "sweeper last counted them. Every worker exports the same count: take max, not sum.",
    registry=REGISTRY,
)
OLDEST_QUEUED_JOB_AGE = Gauge(
    "boig_generation_oldest_queued_job_age_seconds",
    "Time since the oldest queued generation job was submitted (0 while none is queued), as "
    "the generator's sweeper last measured it. Every worker exports the same age: take max.",
    registry=REGISTRY,
)
JOB_QUEUE_SECONDS = Histogram(
    "boig_generation_queue_wait_seconds",
    "Time from a job's creation to its first start on a worker.",
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
CHECKPOINT_PUBLISHED = Gauge(
    "boig_checkpoint_published_timestamp_seconds",
    "Publish time (Unix seconds) of the registry checkpoint this process serves; 0 while a "
    "registry is configured but the base model serves alone (nothing published yet, or the "
    "published version was refused). Absent where no registry is configured.",
    ["service"],
    registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "boig_model_load_seconds",
    "How long the last load of each model of this process took (reading and verifying its "
    "files, moving it to the device, warming it up), by model: llm, detector, diffusion, "
    "boigsd.",
    ["service", "model"],
    registry=REGISTRY,
)
CHECKPOINT_INFO = Gauge(
    "boig_checkpoint_info",
    "1 for the model version each model of this process serves, by model (as in "
    "boig_model_load_seconds), its name and version (the ones the service reports in its "
    "answers' `models`); the previous version's series goes when another is loaded.",
    ["service", "model", "name", "version"],
    registry=REGISTRY,
)

# (service, model) -> the (name, version) its boig_checkpoint_info series carries. A hot
# reload (the describer's event loop) and a task (the generator's worker thread) may record.
_served_versions: dict[tuple[str, str], tuple[str, str]] = {}
_served_lock = threading.Lock()


def record_model_load(service: str, model: str, *, name: str, version: str, seconds: float) -> None:
    """Export a model just loaded: its load time and, replacing the version it supersedes, its
    boig_checkpoint_info series."""
    MODEL_LOAD_SECONDS.labels(service, model).set(seconds)
    with _served_lock:
        _forget_served(service, model, keep=(name, version))
        CHECKPOINT_INFO.labels(service, model, name, version).set(1)
        _served_versions[(service, model)] = (name, version)


def record_model_unloaded(service: str, model: str) -> None:
    """``model`` serves no version any more: its boig_checkpoint_info series goes."""
    with _served_lock:
        _forget_served(service, model)


def _forget_served(service: str, model: str, keep: tuple[str, str] | None = None) -> None:
    previous = _served_versions.pop((service, model), None)
    if previous is not None and previous != keep:
        with contextlib.suppress(KeyError):  # already gone (a test cleared the metric)
            CHECKPOINT_INFO.remove(service, model, *previous)


def serve_worker_metrics(service: str, port: int, host: str) -> None:
    """Serve a Celery worker's /metrics on ``port``, or stop the worker when it cannot.

    Celery logs and swallows what a signal handler raises, so a worker whose port was taken
    went on running jobs while its /metrics was another process's (or nothing): ask the
    worker for its warm shutdown instead, which the orchestrator sees and restarts.
    """
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        logger.critical(
            "%s cannot serve /metrics on %s:%d (%s); stopping", service, host, port, exc
        )
        os.kill(os.getpid(), signal.SIGTERM)
