"""The shared Celery wiring: every Redis connection has timeouts; a task runs under its id."""

from __future__ import annotations

import asyncio
import logging

import httpx
from celery import Celery

from services.common.clients import ServiceClient
from services.common.logging import _RequestIdFilter, request_id_var
from services.common.queue import QueueSettings, create_celery_app


def redis_app(timeout: float) -> Celery:
    settings = QueueSettings(
        broker_url="redis://127.0.0.1:6379/0",
        result_backend="redis://127.0.0.1:6379/1",
        socket_timeout_seconds=timeout,
    )
    return create_celery_app(settings, name="test")


def test_redis_broker_and_result_backend_time_out_instead_of_hanging() -> None:
    conf = redis_app(4).conf
    assert conf.broker_transport_options["socket_timeout"] == 4
    assert conf.broker_transport_options["socket_connect_timeout"] == 4
    assert conf.broker_connection_timeout == 4
    assert conf.redis_socket_timeout == 4
    assert conf.redis_socket_connect_timeout == 4


def test_the_redis_result_backend_client_carries_the_timeouts() -> None:
    # What redis-py's connection pool will be built with: no connection is opened here.
    params = redis_app(4).backend.connparams
    assert params["socket_timeout"] == 4
    assert params["socket_connect_timeout"] == 4


def test_a_task_logs_and_calls_other_services_under_its_job_id() -> None:
    """The task id is the job id: the worker's lines carry it, and so do the describer's and
    scorer's, which receive it as X-Request-ID."""
    settings = QueueSettings(broker_url="memory://", result_backend="cache+memory://")
    app = create_celery_app(settings, name="test-ids")
    app.conf.task_always_eager = True
    seen: dict[str, str | None] = {}

    def upstream(request: httpx.Request) -> httpx.Response:
        seen["header"] = request.headers.get("X-Request-ID")
        return httpx.Response(200, json={"status": "ok"})

    @app.task(name="test.job")
    def job() -> None:
        record = logging.LogRecord("worker", logging.INFO, __file__, 1, "job started", (), None)
        _RequestIdFilter().filter(record)
        seen["log"] = record.request_id

        async def call() -> None:
            async with ServiceClient("http://up", transport=httpx.MockTransport(upstream)) as c:
                await c._send("POST", "/describe", b"{}")

        asyncio.run(call())

    job.apply(task_id="0123abcd")
    assert seen == {"log": "0123abcd", "header": "0123abcd"}
    assert request_id_var.get() is None  # and nothing left behind for the next task
    job.apply(task_id="4567ef")
    assert seen["log"] == "4567ef"
