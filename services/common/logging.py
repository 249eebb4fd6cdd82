"""Stdlib logging with the request id (a Celery task's job or run id) in every line, as text or
as one JSON object per line."""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, get_args

request_id_var: ContextVar[str | None] = ContextVar("boig_request_id", default=None)

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_service: str | None = None


def new_request_id(incoming: str | None = None) -> str:
    """Keep a caller's well-formed request id (so one id follows a request across services)."""
    if incoming and _VALID_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def current_service() -> str | None:
    """The service this process runs, as ``configure_logging`` was told; None before that."""
    return _service


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601 with milliseconds), level, logger,
    message (its % arguments applied), request_id (null outside a request or task), service,
    and exc_info (the formatted traceback) or stack_info when the record has them."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id in (None, "-") else request_id,
            "service": self._service,
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a message argument json cannot encode is already text in "message";
        # this covers an odd request id type, never worth losing the line over.
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", *, service: str, log_format: LogFormat = "text") -> None:
    """Idempotent: one stderr handler on the root logger, tagged with the service name, writing
    text lines or (``log_format="json"``) one JSON object per line."""
    global _service
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    _service = service
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_boig", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._boig = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s {service} [%(request_id)s] %(name)s: %(message)s"
            )
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings are printed to stderr as they are, unless logged: as JSON lines then.
    logging.captureWarnings(log_format == "json")
