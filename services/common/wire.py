"""Request bodies in JSON or MessagePack: the internal hops carry image files as raw bytes.

JSON stays the public form (images in base64). Between our services a request that carries
images travels as MessagePack, where bytes are bytes: a 16-creative batch crosses a hop
without being base64-encoded and decoded again (a third larger, and decoding is the costly
half). multipart/form-data would do too, but python-multipart parses a 500 KB body in
about 20 ms against well under 1 ms for msgpack (measured on the 2-core machine).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import msgpack
from fastapi import Request
from pydantic import BaseModel, ValidationError

from services.common.errors import InvalidInput, UnsupportedMediaType, validation_message

JSON = "application/json"
MSGPACK = "application/msgpack"
ModelT = TypeVar("ModelT", bound=BaseModel)


def _plain(value: object) -> object:
    # The only non-msgpack type in our contracts; pydantic reads the ISO text back.
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot send a {type(value).__name__} in a MessagePack body")


def pack(model: BaseModel) -> bytes:
    """The model as MessagePack: the Python form, so image fields stay raw bytes."""
    packed: bytes = msgpack.packb(model.model_dump(by_alias=True), default=_plain)
    return packed


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; none means JSON."""
    return (content_type or JSON).split(";")[0].strip().lower() or JSON


def parse_body(model: type[ModelT], body: bytes, content_type: str | None) -> ModelT:
    """Validate a JSON or MessagePack body into ``model``; a typed 422 or 415 otherwise."""
    kind = media_type(content_type)
    try:
        if kind == JSON:
            return model.model_validate_json(body)
        if kind == MSGPACK:
            return model.model_validate(_unpack(body))
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from exc
    raise UnsupportedMediaType(f"unsupported content type {kind!r}: send {JSON} or {MSGPACK}")


def body_reader(model: type[ModelT]) -> Callable[[Request], Awaitable[ModelT]]:
    """A FastAPI dependency that reads the body as ``model`` from JSON or MessagePack:
    ``body: Annotated[ScoreRequest, Depends(body_reader(ScoreRequest))]``, with
    ``openapi_extra=request_body(ScoreRequest, images=True)`` on the route."""

    async def read(request: Request) -> ModelT:
        body = await request.body()
        return parse_body(model, body, request.headers.get("content-type"))

    return read


def _unpack(body: bytes) -> Any:
    try:
        # Extension types are refused: nothing in our contracts needs one.
        return msgpack.unpackb(body, raw=False, ext_hook=_no_extensions)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidInput(f"the body is not valid MessagePack: {reason}") from exc


def _no_extensions(code: int, _data: bytes) -> object:
    raise ValueError(f"MessagePack extension type {code} is not accepted")


def request_body(model: type[BaseModel], *, images: bool) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads its body with ``parse_body``."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if images:
        content[MSGPACK] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}
