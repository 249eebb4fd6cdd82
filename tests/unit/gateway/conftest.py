"""Databases for the gateway tests: SQLite in tmp_path, and the real PostgreSQL (marked).

Each PostgreSQL test gets its own schema (search_path set per connection), dropped
afterwards, so tests never see or leave rows in anybody else's tables.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.db import Database

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"


def postgres_schema_or_skip() -> tuple[str, str]:
    """Create a throwaway schema; return (database URL using it, schema name)."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"boig_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema


def drop_postgres_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
        db.create_schema()
        yield db
        db.dispose()
        return
    url, schema = postgres_schema_or_skip()
    db = Database(url)
    try:
        db.create_schema()
        yield db
    finally:
        db.dispose()
        drop_postgres_schema(schema)


@pytest.fixture
def redis_url() -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return REDIS_URL
