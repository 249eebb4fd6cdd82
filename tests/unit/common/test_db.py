"""The SQL layer on both engines we support: SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import String, event, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, Database
from tests.servers import POSTGRES_URL, server_missing


class _Note(Base):
    __tablename__ = f"test_note_{uuid.uuid4().hex[:8]}"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(50), unique=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = (
        f"sqlite:///{tmp_path / 'nested' / 'boig.db'}"
        if request.param == "sqlite"
        else POSTGRES_URL
    )
    db = Database(url)
    try:
        with db.engine.connect() as connection:
            connection.execute(text("select 1"))
    except OperationalError as exc:
        server_missing(f"{request.param} unreachable: {exc}")
    _Note.__table__.create(db.engine, checkfirst=True)  # type: ignore[attr-defined]
    yield db
    _Note.__table__.drop(db.engine, checkfirst=True)  # type: ignore[attr-defined]
    db.dispose()


def test_session_commits_on_success(database: Database) -> None:
    with database.session() as session:
        session.add(_Note(body="hello"))
    with database.session() as session:
        assert session.scalars(select(_Note.body)).all() == ["hello"]


def test_session_rolls_back_on_error(database: Database) -> None:
    with database.session() as session:
        session.add(_Note(body="once"))
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(_Note(body="twice"))
        session.add(_Note(body="once"))
    with database.session() as session:
        assert session.scalars(select(_Note.body)).all() == ["once"]


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    db.dispose()


class _Stop(Exception):
    pass


def _connect_params(url: str) -> dict[str, object]:
    """The keyword arguments the engine hands the PostgreSQL driver (no server needed)."""
    db = Database(url)
    seen: dict[str, object] = {}

    def capture(*args: object) -> None:
        seen.update(args[3])  # type: ignore[call-overload]
        raise _Stop

    event.listen(db.engine, "do_connect", capture)
    with pytest.raises(_Stop):
        db.engine.connect()
    return seen


def test_postgres_connections_time_out_instead_of_hanging() -> None:
    assert _connect_params("postgresql://boig@192.0.2.1/db")["connect_timeout"] == 10


def test_a_connect_timeout_in_the_url_wins() -> None:
    assert (
        _connect_params("postgresql://boig@192.0.2.1/db?connect_timeout=3")["connect_timeout"]
        == "3"
    )
