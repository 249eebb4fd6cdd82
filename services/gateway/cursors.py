"""Opaque page cursors of the gateway's newest-first lists (feedback, retrain decisions)."""

from __future__ import annotations

import base64
import binascii

from services.common.errors import InvalidInput


def encode_cursor(seq: int, *, prefix: str) -> str:
    """An opaque page cursor: clients pass it back, never build one. ``prefix`` names the
    list it pages, so one list's cursor is refused by another."""
    return base64.urlsafe_b64encode(f"{prefix}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, prefix: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("cursor: not a cursor this API gave out") from exc
    number = text.removeprefix(prefix)
    if not text.startswith(prefix) or not number.isdigit() or len(number) > 18:
        raise InvalidInput("cursor: not a cursor this API gave out")
    return int(number)
