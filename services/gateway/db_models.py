"""The gateway's tables: API keys, stored as a public prefix plus a hash of the secret."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class ApiKey(Base):
    """One API key. The secret itself is never stored: only its SHA-256."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), doc="Who or what the key is for.")
    prefix: Mapped[str] = mapped_column(
        String(16), unique=True, index=True, doc="Short public id, shown in lists and logs."
    )
    key_hash: Mapped[str] = mapped_column(String(64), doc="SHA-256 hex of the secret part.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
