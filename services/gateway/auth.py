"""API keys: creation (shown once), hash-only storage, constant-time verification, revocation.

A key reads ``boig_<prefix>_<secret>``: the prefix is a short public id that finds the row
(and names the key in lists, logs and rate-limit counters); the secret is 256 random bits
of which only the SHA-256 is stored. A fast unsalted hash is enough here because the secret
is random, not a password: there is nothing to guess from a leaked hash.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.errors import InvalidInput, NotFound, Unauthorized
from services.gateway.db_models import ApiKey, utcnow

logger = logging.getLogger(__name__)

KEY_SCHEME = "boig"
PREFIX_BYTES = 4  # 8 hex characters: short enough to read out, unique by constraint
SECRET_BYTES = 32
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""last_used_at is refreshed at most this often, so that authenticating is not a write each time."""

# Compared against when the prefix is unknown, so that a miss costs the same as a wrong secret.
_NO_SUCH_KEY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key: never the secret nor its hash."""

    prefix: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class CreatedKey:
    info: ApiKeyInfo
    key: str
    """The full key. It exists only here: print it once, then forget it."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``boig_<prefix>_<secret>`` → (prefix, secret), or None when the key is not in that form."""
    scheme, _, rest = key.partition("_")
    prefix, _, secret = rest.partition("_")  # the secret may itself contain '_'
    if scheme != KEY_SCHEME or len(prefix) != 2 * PREFIX_BYTES or not secret:
        return None
    if any(char not in "0123456789abcdef" for char in prefix):
        return None
    return prefix, secret


class KeyStore:
    """API keys in the gateway database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def create(self, name: str) -> CreatedKey:
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidInput("key name must be 1 to 100 characters")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        for _ in range(5):  # a 32-bit prefix collides rarely; the unique constraint decides
            prefix = secrets.token_hex(PREFIX_BYTES)
            row = ApiKey(
                name=name, prefix=prefix, key_hash=hash_secret(secret), created_at=utcnow()
            )
            try:
                with self._db.session() as session:
                    session.add(row)
            except IntegrityError:
                continue
            logger.info("created API key %s (%s)", prefix, name)
            return CreatedKey(info=_info(row), key=f"{KEY_SCHEME}_{prefix}_{secret}")
        raise RuntimeError("could not find a free key prefix")

    def list(self) -> list[ApiKeyInfo]:
        with self._db.session() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()
            return [_info(row) for row in rows]

    def revoke(self, prefix: str) -> ApiKeyInfo:
        """Revoke a key by its prefix; revoking twice keeps the first revocation time."""
        with self._db.session() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
            if row is None:
                raise NotFound(f"no API key with prefix {prefix!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                logger.info("revoked API key %s", prefix)
            return _info(row)

    def verify(self, key: str) -> ApiKeyInfo:
        """The key's info if it is valid and not revoked; Unauthorized otherwise."""
        parts = split_key(key)
        prefix, secret = parts if parts is not None else ("", key)
        with self._db.session() as session:
            row = (
                session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
                if parts is not None
                else None
            )
            stored_hash = row.key_hash if row is not None else _NO_SUCH_KEY_HASH
            # Hash and compare even when the row is missing, in constant time, so response
            # timing tells an attacker neither which prefixes exist nor how much of a hash matched.
            matches = hmac.compare_digest(stored_hash, hash_secret(secret))
            if row is None or not matches:
                logger.info("refused an invalid API key (prefix %s)", prefix or "-")
                raise Unauthorized("invalid API key")
            if row.revoked_at is not None:
                logger.info("refused revoked API key %s", prefix)
                raise Unauthorized("API key has been revoked")
            now = utcnow()
            if row.last_used_at is None or now - _aware(row.last_used_at) > LAST_USED_RESOLUTION:
                session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
                row.last_used_at = now
            return _info(row)


def _aware(moment: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        prefix=row.prefix,
        name=row.name,
        created_at=_aware(row.created_at),
        revoked_at=_aware(row.revoked_at) if row.revoked_at is not None else None,
        last_used_at=_aware(row.last_used_at) if row.last_used_at is not None else None,
    )


# --- FastAPI dependency ------------------------------------------------------------------

# auto_error=False on both: either header may carry the key, and a missing key must become
# our 401 JSON error rather than FastAPI's own 403 body. Declaring them as dependencies is
# what puts both security schemes into the OpenAPI document (and the /docs "Authorize" box).
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="`Authorization: Bearer boig_<prefix>_<secret>`",
)
api_key_header_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="`X-API-Key: boig_<prefix>_<secret>`",
)


def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header_key: Annotated[str | None, Depends(api_key_header_scheme)],
) -> ApiKeyInfo:
    """Authenticate the caller. A sync dependency on purpose: FastAPI runs it in a thread,
    so the database lookup never blocks the event loop."""
    presented = bearer.credentials if bearer is not None else header_key
    if not presented:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
    store: KeyStore = request.app.state.key_store
    return store.verify(presented.strip())


ApiKeyDep = Annotated[ApiKeyInfo, Depends(require_api_key)]
