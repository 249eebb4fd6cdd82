"""One error hierarchy for every service, and the single JSON shape it travels in.

Each error carries a machine-readable ``type`` so that clients can map an upstream
error body back to the same exception class (see ``error_from_payload``). The Python client
ships this module as ``boig_client.errors`` (clients/python): it imports the standard library
only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar, Protocol


class BoigError(Exception):
    """Base of every error a BOIG service reports to a caller."""

    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.request_id: str | None = None
        """The X-Request-ID of the answer it was rebuilt from (``error_from_payload``): what
        finds its lines in the services' logs."""

    def to_payload(self, request_id: str | None) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "request_id": request_id}}


class InvalidInput(BoigError):
    status_code = 422
    type = "invalid_input"


class InvalidImage(InvalidInput):
    type = "invalid_image"


class PayloadTooLarge(BoigError):
    status_code = 413
    type = "payload_too_large"


class UnsupportedMediaType(BoigError):
    status_code = 415
    type = "unsupported_media_type"


class Unauthorized(BoigError):
    status_code = 401
    type = "unauthorized"


class NotFound(BoigError):
    status_code = 404
    type = "not_found"


class Conflict(BoigError):
    """The request clashes with the resource's state (an idempotency key reused with another
    body, a finished job asked to cancel)."""

    status_code = 409
    type = "conflict"


class RateLimited(BoigError):
    status_code = 429
    type = "rate_limited"


class Overloaded(BoigError):
    status_code = 503
    type = "overloaded"


class ClientClosedRequest(BoigError):
    """The client went away before the answer was ready; its work was dropped. Nobody reads
    this answer: it exists for logs and metrics (499, as nginx counts it)."""

    status_code = 499
    type = "client_closed_request"


class UpstreamError(BoigError):
    """An internal service could not be reached or answered outside the contract."""

    status_code = 502
    type = "upstream_error"


class BackendError(BoigError):
    """A model backend failed while serving a valid request."""

    status_code = 500
    type = "backend_error"


class ModelOutputError(BackendError):
    """The model answered, but nothing usable could be parsed from its output."""

    type = "model_output_error"


class ModelUnavailable(BackendError):
    status_code = 503
    type = "model_unavailable"


class TimeLimitExceeded(BackendError):
    """A job ran past its time limit and was stopped."""

    status_code = 504
    type = "time_limit_exceeded"


class WorkerLost(BackendError):
    """A job's worker died while running it (killed for memory, a crash) as many times as a
    job may be tried: it is failed rather than handed to the next worker to kill."""

    type = "worker_lost"


_ERROR_TYPES: dict[str, type[BoigError]] = {
    cls.type: cls
    for cls in (
        BoigError,
        InvalidInput,
        InvalidImage,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unauthorized,
        NotFound,
        Conflict,
        RateLimited,
        Overloaded,
        ClientClosedRequest,
        UpstreamError,
        BackendError,
        ModelOutputError,
        ModelUnavailable,
        TimeLimitExceeded,
        WorkerLost,
    )
}


def error_from_payload(
    payload: Any, *, status_code: int, retry_after: float | None = None
) -> BoigError:
    """Rebuild the typed error an upstream service sent (with its ``Retry-After``, so a
    refusal keeps telling the client when to come back, hop after hop); unknown shapes
    become UpstreamError."""
    try:
        body = payload["error"]
        error_type = str(body["type"])
        message = str(body["message"])
    except (KeyError, TypeError):
        return UpstreamError(f"upstream answered {status_code} without an error body")
    cls = _ERROR_TYPES.get(error_type)
    error = (
        cls(message, retry_after=retry_after)
        if cls is not None
        else UpstreamError(f"upstream error {error_type}: {message}")
    )
    request_id = body.get("request_id") if isinstance(body, dict) else None
    error.request_id = request_id if isinstance(request_id, str) else None
    return error


class ValidationProblems(Protocol):
    """A failed validation: pydantic's ValidationError, FastAPI's RequestValidationError."""

    def errors(self) -> Sequence[Any]: ...


MOST_PROBLEMS_NAMED = 5
"""Problems a validation message names; it counts the rest."""


def validation_message(
    exc: ValidationProblems, *, omit: Collection[str] = (), whole: str | None = "body"
) -> str:
    """The one-line message of a failed validation (a 422, a refused row or model output):
    its first problems, each after where it is (``creatives.0.id: ...``), then how many more.

    ``omit`` drops location parts the sender never wrote (FastAPI's leading ``body``, nesting
    that the input does not have); a problem of the object as a whole is put after ``whole``,
    or stands alone when ``whole`` is None.
    """
    errors = list(exc.errors())
    parts = []
    for error in errors[:MOST_PROBLEMS_NAMED]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in omit) or whole
        message = str(error.get("msg", "invalid"))
        parts.append(f"{where}: {message}" if where else message)
    more = len(errors) - MOST_PROBLEMS_NAMED
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
