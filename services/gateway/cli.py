"""Operator commands for the gateway: ``python -m services.gateway.cli keys create|list|revoke``
and ``init-db``. The full key is printed once, at creation, and never again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.common.db import Database
from services.common.errors import BoigError
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings

app = typer.Typer(help="BOIG gateway administration.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL; defaults to BOIG_GATEWAY_DATABASE_URL or the embedded SQLite file.",
        show_default=False,
    ),
]

console = Console()
errors = Console(stderr=True)


@contextmanager
def _database(url: str | None) -> Iterator[Database]:
    database = Database(url or GatewaySettings().database_url)
    try:
        database.create_schema()  # idempotent: a fresh install can create a key straight away
        yield database
    finally:
        database.dispose()


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "-"


@app.command("init-db")
def init_db(database_url: DatabaseUrl = None) -> None:
    """Create the gateway's tables (safe to run again)."""
    with _database(database_url) as database:
        console.print(f"schema ready in {database.engine.url.render_as_string(hide_password=True)}")


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Create a key and print it. It is shown this once: only its hash is stored."""
    with _database(database_url) as database:
        try:
            created = KeyStore(database).create(name)
        except BoigError as exc:
            errors.print(f"error: {exc.message}")
            raise typer.Exit(code=2) from exc
    # Plain print, not rich: the key must come out exactly, with no wrapping or markup.
    typer.echo(created.key)
    errors.print(
        f"created key {created.info.prefix} for {created.info.name!r}; "
        "store it now, it cannot be shown again"
    )


@keys_app.command("list")
def list_keys(database_url: DatabaseUrl = None) -> None:
    """List keys (prefix, name, created, last used, revoked); secrets are never shown."""
    with _database(database_url) as database:
        infos = KeyStore(database).list()
    table = Table("prefix", "name", "created", "last used", "revoked")
    for info in infos:
        table.add_row(
            info.prefix,
            info.name,
            _when(info.created_at),
            _when(info.last_used_at),
            _when(info.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def revoke_key(
    prefix: Annotated[str, typer.Argument(help="The key's public prefix, as in `keys list`.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    with _database(database_url) as database:
        try:
            info = KeyStore(database).revoke(prefix)
        except BoigError as exc:
            errors.print(f"error: {exc.message}")
            raise typer.Exit(code=1) from exc
    console.print(f"revoked {info.prefix} ({info.name}) at {_when(info.revoked_at)}")


if __name__ == "__main__":
    app()
