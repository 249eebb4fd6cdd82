"""The SQL layer: SQLAlchemy engines and sessions for SQLite (embedded) or PostgreSQL.

Services declare their tables on ``Base`` in their own modules; this module only knows
how to connect, create the schema and hand out sessions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session, sessionmaker

from services.common.settings import boig_home

RowT = TypeVar("RowT")

CONNECT_TIMEOUT_SECONDS = 10
"""PostgreSQL: a server that does not accept a connection within this is down, not slow
(libpq waits forever by default). A ``connect_timeout`` in the URL's query wins."""
POOL_TIMEOUT_SECONDS = 10
"""How long a request waits for a free pooled connection before it fails."""


class Base(DeclarativeBase):
    pass


def default_database_url() -> str:
    return f"sqlite:///{boig_home() / 'boig.db'}"


def create_database_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout for concurrency."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver we install; plain postgresql:// would look for psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = (
        {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    )
    return create_engine(
        parsed, pool_pre_ping=True, pool_timeout=POOL_TIMEOUT_SECONDS, connect_args=connect_args
    )


def _sqlite_pragmas(connection: object, _record: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


class Database:
    """An engine plus a session factory; ``with db.session() as s`` commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_database_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def create_schema(self) -> None:
        create_schema(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def newest_first_page(
    session: Session,
    query: Select[RowT],
    seq: InstrumentedAttribute[int],
    *,
    limit: int,
    before: int | None,
) -> tuple[Sequence[RowT], int | None]:
    """Keyset paging on an increasing ``seq`` column: up to ``limit`` rows of ``query``,
    newest first, below ``before``; and the ``before`` of the next page, None on the last.
    One row more than the page is read to know whether another page follows."""
    if before is not None:
        query = query.where(seq < before)
    rows = session.scalars(query.order_by(seq.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    return page, (getattr(page[-1], seq.key) if len(rows) > limit else None)
