"""The shared Celery wiring: every Redis connection has timeouts."""

from __future__ import annotations

from celery import Celery

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
