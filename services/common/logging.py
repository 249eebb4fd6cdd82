"""Stdlib logging with the request id in every line."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("boig_request_id", default=None)

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id(incoming: str | None = None) -> str:
    """Keep a caller's well-formed request id (so one id follows a request across services)."""
    if incoming and _VALID_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


def configure_logging(level: str = "INFO", *, service: str) -> None:
    """Idempotent: one stderr handler on the root logger, tagged with the service name."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_boig", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._boig = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {service} [%(request_id)s] %(name)s: %(message)s"
        )
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
