"""The Celery wiring the gateway (producer) and the generator worker (consumer) share.

Both build their Celery app from the same ``QueueSettings`` (env prefix ``BOIG_QUEUE_``), so
the broker, the result backend, the queue name and the reliability options have one spelling.
The gateway sends tasks by name and never imports the worker's code.

Embedded default: no server at all. Kombu's SQLAlchemy transport keeps the queue in a SQLite
file that every process on the machine can share; deployments set Redis URLs.
"""

from __future__ import annotations

from contextvars import Token
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.signals import task_postrun, task_prerun
from kombu.transport.sqlalchemy import Transport as SqlAlchemyTransport
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.logging import request_id_var
from services.common.settings import boig_home

GENERATE_TASK = "boig.generate"
GPU_QUEUE = "gpu"
TRAIN_TASK = "boig.train"
TRAIN_QUEUE = "train"
"""Training runs travel on their own queue: never behind (or ahead of) generation jobs."""
SQLALCHEMY_BROKER_PREFIX = "sqla+"
PROGRESS_STATE = "PROGRESS"
"""Celery task state of a running job; its meta is a ``JobProgress``."""


def _default_broker_url() -> str:
    return f"sqla+sqlite:///{boig_home() / 'queue' / 'broker.db'}"


def _default_result_backend() -> str:
    return f"db+sqlite:///{boig_home() / 'queue' / 'results.db'}"


class QueueSettings(BaseSettings):
    """Where generation tasks travel and how long one may take."""

    model_config = SettingsConfigDict(env_prefix="BOIG_QUEUE_", extra="ignore", frozen=True)

    broker_url: str = Field(
        default_factory=_default_broker_url,
        description=(
            "Celery broker: redis://host:6379/0 in deployment; the embedded default is a "
            "SQLite file through kombu's SQLAlchemy transport (no server)."
        ),
    )
    result_backend: str = Field(
        default_factory=_default_result_backend,
        description="Celery result backend (task state and progress): redis://… or db+sqlite:///…",
    )
    task_time_limit_seconds: float = Field(
        default=600.0, gt=0, description="A generation task is stopped after this long."
    )
    visibility_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description=(
            "Redis broker: a task taken by a worker that died is handed out again after this "
            "long. Must exceed the task time limit, or a slow task would run twice."
        ),
    )
    socket_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Redis broker and result backend: a connect or a command that takes longer fails "
            "instead of hanging a request or a worker (redis-py waits forever by default)."
        ),
    )
    polling_interval_seconds: float = Field(
        default=0.1,
        gt=0,
        description="SQLAlchemy broker only: how often an idle worker looks for a task.",
    )

    @model_validator(mode="after")
    def _visibility_above_time_limit(self) -> QueueSettings:
        if self.visibility_timeout_seconds <= self.task_time_limit_seconds:
            raise ValueError(
                f"visibility_timeout_seconds ({self.visibility_timeout_seconds}) must exceed "
                f"task_time_limit_seconds ({self.task_time_limit_seconds})"
            )
        return self

    @property
    def uses_redis(self) -> bool:
        return urlsplit(self.broker_url).scheme in ("redis", "rediss")


_task_tokens: dict[str, Token[str | None]] = {}


def _tag_task(task_id: str | None = None, **_: Any) -> None:
    """While a task runs, its id (the job's or the training run's) is the request id: every
    line it logs carries it, and every service it calls receives it as X-Request-ID, so the
    describer's, scorer's and featurizer's lines for a job carry the job id too."""
    if task_id:
        _task_tokens[task_id] = request_id_var.set(task_id)


def _untag_task(task_id: str | None = None, **_: Any) -> None:
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        request_id_var.reset(token)


def create_celery_app(settings: QueueSettings, *, name: str) -> Celery:
    """A Celery app configured for durable, at-least-once generation tasks."""
    # Signals are process-wide; the uid connects them once however many apps a process builds.
    task_prerun.connect(_tag_task, weak=False, dispatch_uid="boig-tag-task")
    task_postrun.connect(_untag_task, weak=False, dispatch_uid="boig-untag-task")
    for url in (settings.broker_url, settings.result_backend):
        _make_sqlite_folder(url)
    broker_url = settings.broker_url
    transport_options: dict[str, float] = {}
    timeout = settings.socket_timeout_seconds
    if settings.uses_redis:
        transport_options |= {
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
    app = Celery(name, broker=broker_url, backend=settings.result_backend)
    if broker_url.startswith(SQLALCHEMY_BROKER_PREFIX):
        # kombu's SQLAlchemy transport hands every transport option to create_engine, so its
        # polling interval can only be set on the class.
        app.conf.broker_url = broker_url.removeprefix(SQLALCHEMY_BROKER_PREFIX)
        app.conf.broker_transport = type(
            "PollingSqlAlchemyTransport",
            (SqlAlchemyTransport,),
            {"polling_interval": settings.polling_interval_seconds},
        )
    app.conf.update(
        task_routes={
            GENERATE_TASK: {"queue": GPU_QUEUE},
            TRAIN_TASK: {"queue": TRAIN_QUEUE},
        },
        task_default_queue=GPU_QUEUE,
        # A task is acknowledged when it ends, not when it starts: a worker killed mid-job
        # leaves the message to be delivered again, and the task is idempotent per job.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        task_soft_time_limit=max(1.0, settings.task_time_limit_seconds * 0.9),
        broker_transport_options=transport_options,
        result_backend_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=timeout,
        # Read by the Redis result backend only; other backends ignore them.
        redis_socket_timeout=timeout,
        redis_socket_connect_timeout=timeout,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_extended=False,
        task_track_started=True,
        worker_hijack_root_logger=False,
        # Jobs are durable in the SQL store; stale task states can go after a day.
        result_expires=86_400,
    )
    return app


def send_generation_task(app: Celery, job_id: str, **options: Any) -> None:
    """Put a job's task on the GPU queue. The message is the job id alone (also the task id,
    so the task's state is the job's); everything else is in the job store."""
    app.send_task(GENERATE_TASK, args=[job_id], task_id=job_id, queue=GPU_QUEUE, **options)


def send_training_task(app: Celery, run_id: str) -> None:
    """Put a training run's task on the train queue (the run id is the message and task id)."""
    app.send_task(TRAIN_TASK, args=[run_id], task_id=run_id, queue=TRAIN_QUEUE)


def _make_sqlite_folder(url: str) -> None:
    # sqla+sqlite:///path and db+sqlite:///path: SQLite creates the file, not its folder.
    for prefix in ("sqla+sqlite:///", "db+sqlite:///"):
        if url.startswith(prefix):
            Path(url.removeprefix(prefix)).parent.mkdir(parents=True, exist_ok=True)
