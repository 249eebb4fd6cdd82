"""API keys against SQLite and PostgreSQL: creation, hash-only storage, verification, revocation."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from services.common.db import Database
from services.common.errors import InvalidInput, NotFound, Unauthorized
from services.gateway import auth
from services.gateway.auth import KeyStore, hash_secret, split_key
from services.gateway.cli import app as cli
from services.gateway.db_models import ApiKey, utcnow


def test_created_key_has_the_documented_shape(database: Database) -> None:
    created = KeyStore(database).create("marketing app")
    scheme, prefix, secret = created.key.split("_", 2)
    assert scheme == "boig"
    assert prefix == created.info.prefix and len(prefix) == 8
    assert len(secret) >= 43  # token_urlsafe(32): 256 bits
    assert created.info.name == "marketing app"
    assert created.info.revoked_at is None
    assert split_key(created.key) == (prefix, secret)


def test_only_the_hash_of_the_secret_is_stored(database: Database) -> None:
    created = KeyStore(database).create("app")
    _, secret = split_key(created.key) or ("", "")
    with database.session() as session:
        row = session.scalars(select(ApiKey)).one()
        stored = [str(getattr(row, column.key)) for column in ApiKey.__table__.columns]
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in value or created.key in value for value in stored)


def test_keys_are_unique_and_verify(database: Database) -> None:
    store = KeyStore(database)
    first, second = store.create("a"), store.create("b")
    assert first.key != second.key and first.info.prefix != second.info.prefix
    assert store.verify(first.key).name == "a"
    assert store.verify(second.key).name == "b"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),  # wrong secret
        lambda key: "boig_00000000_" + key.split("_", 2)[2],  # unknown prefix, real secret
        lambda key: key.split("_", 2)[2],  # the secret alone
        lambda key: "",
        lambda key: "boig__x",
        lambda key: key.replace("boig_", "BOIG_", 1),
    ],
    ids=["wrong-secret", "unknown-prefix", "secret-only", "empty", "no-prefix", "wrong-scheme"],
)
def test_invalid_keys_are_refused(database: Database, mangle: object) -> None:
    store = KeyStore(database)
    key = store.create("app").key
    assert callable(mangle)
    with pytest.raises(Unauthorized, match="invalid API key"):
        store.verify(mangle(key))


def test_revoked_keys_are_refused_and_revocation_is_idempotent(database: Database) -> None:
    store = KeyStore(database)
    created = store.create("leaky")
    revoked = store.revoke(created.info.prefix)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthorized, match="revoked"):
        store.verify(created.key)
    assert store.revoke(created.info.prefix).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        store.revoke("ffffffff")


def test_list_shows_keys_without_secrets(database: Database) -> None:
    store = KeyStore(database)
    created = [store.create(name) for name in ("first", "second")]
    store.revoke(created[0].info.prefix)
    listed = store.list()
    assert [info.name for info in listed] == ["first", "second"]
    assert [info.revoked_at is not None for info in listed] == [True, False]
    assert not any(hasattr(info, "key_hash") or hasattr(info, "key") for info in listed)


def test_last_used_is_recorded_but_not_on_every_request(database: Database) -> None:
    store = KeyStore(database)
    created = store.create("app")
    first = store.verify(created.key).last_used_at
    assert first is not None and utcnow() - first < timedelta(seconds=30)
    assert store.verify(created.key).last_used_at == first
    with database.session() as session:
        session.execute(update(ApiKey).values(last_used_at=first - timedelta(minutes=5)))
    assert (store.verify(created.key).last_used_at or first) > first - timedelta(minutes=1)


def test_names_are_checked(database: Database) -> None:
    with pytest.raises(InvalidInput):
        KeyStore(database).create("   ")
    with pytest.raises(InvalidInput):
        KeyStore(database).create("x" * 101)


def test_every_refusal_goes_through_the_constant_time_comparison(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[str, str]] = []
    real_compare = hmac.compare_digest

    def recording_compare(a: str, b: str) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording_compare)
    store = KeyStore(database)
    key = store.create("app").key
    prefix, secret = split_key(key) or ("", "")
    for presented in (key, f"boig_{prefix}_wrong", "boig_12345678_" + secret):
        with contextlib.suppress(Unauthorized):
            store.verify(presented)
    # One comparison per attempt, always of two full-length SHA-256 hex digests, even when
    # the prefix does not exist: a miss must cost what a wrong secret costs.
    assert len(compared) == 3
    assert all(len(a) == len(b) == 64 for a, b in compared)
    assert compared[2][1] == hash_secret(secret)


def test_keys_never_reach_the_logs(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = KeyStore(database)
    created = store.create("app")
    store.verify(created.key)
    with pytest.raises(Unauthorized):
        store.verify(created.key + "x")
    store.revoke(created.info.prefix)
    with pytest.raises(Unauthorized):
        store.verify(created.key)
    _, secret = split_key(created.key) or ("", "")
    assert caplog.records  # the events are logged, by prefix
    assert not any(secret in record.getMessage() for record in caplog.records)


def test_cli_creates_lists_and_revokes(database: Database) -> None:
    runner = CliRunner()
    url = database.url
    created = runner.invoke(cli, ["keys", "create", "--name", "cli app", "--database-url", url])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    prefix, _ = split_key(key) or ("", "")
    assert prefix, created.stdout
    assert KeyStore(database).verify(key).name == "cli app"

    listed = runner.invoke(cli, ["keys", "list", "--database-url", url])
    assert listed.exit_code == 0 and prefix in listed.stdout and "cli app" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # the key is printed once, at creation

    revoked = runner.invoke(cli, ["keys", "revoke", prefix, "--database-url", url])
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(Unauthorized, match="revoked"):
        KeyStore(database).verify(key)
    missing = runner.invoke(cli, ["keys", "revoke", "ffffffff", "--database-url", url])
    assert missing.exit_code == 1


def test_cli_init_db_creates_the_schema(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    result = CliRunner().invoke(cli, ["init-db", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert KeyStore(Database(url)).list() == []
