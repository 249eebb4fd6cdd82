"""Each API call as data: the request it sends, built and checked from typed arguments, and how
its answer is read. The sync and the async client share these; they only send them.

Arguments are checked against the wire contracts before anything is sent: what the gateway
would refuse with a 422 is refused here as the same ``InvalidInput``.
"""

from __future__ import annotations

import io
import mimetypes
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeAlias, TypeVar, runtime_checkable
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from boig_client.contracts import (
    CheckpointList,
    Context,
    Creative,
    DescribeRequest,
    DescribeResponse,
    FeedbackFilter,
    FeedbackPage,
    FeedbackRecord,
    FeedbackRequest,
    GenerateRequest,
    JobAccepted,
    JobImage,
    JobStatus,
    KpiTarget,
    RetrainAction,
    RetrainDecision,
    RetrainDecisionFilter,
    RetrainDecisionPage,
    RewardName,
    ScoreRequest,
    ScoreResponse,
    Strategy,
    TargetDescription,
)
from boig_client.errors import InvalidInput, UpstreamError, error_from_payload, validation_message
from boig_client.retries import retry_after_seconds

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)

JSON_HEADERS = {"Content-Type": "application/json"}


@runtime_checkable
class SavableImage(Protocol):
    """An image in memory that writes itself as a file, as a PIL ``Image`` does."""

    def save(self, fp: IO[bytes], format: str | None = None) -> object: ...


CreativeSource: TypeAlias = str | os.PathLike[str] | bytes | SavableImage
"""A creative: a file path, the file's bytes (PNG, JPEG, WebP, GIF), or an image in memory
(sent as PNG)."""
Creatives: TypeAlias = Sequence[CreativeSource] | Mapping[str, CreativeSource]
"""A list of creatives, named by the gateway after their file names (``creative-N`` for bytes
and images), or a mapping of the ids to report them under to creatives."""
ContextInput: TypeAlias = Context | Mapping[str, Any]
TargetInput: TypeAlias = KpiTarget | Mapping[str, Any] | None
JobRef: TypeAlias = str | JobAccepted | JobStatus


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: what to send, whether sending it twice is safe, how to read the answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    content: bytes | None = None
    data: Mapping[str, str] | None = None
    files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    replayable: bool = True
    """A second delivery has the effect of one, so it may be sent again when the first one's
    fate is unknown (a timeout, a dropped connection)."""

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"

    def request(
        self, http: httpx.Client | httpx.AsyncClient, base_url: str, headers: Mapping[str, str]
    ) -> httpx.Request:
        """A fresh request for one attempt (a multipart body is read once per request)."""
        return http.build_request(
            self.method,
            base_url + self.path,
            params=self.params,
            content=self.content,
            data=self.data,
            files=self.files,
            headers={**headers, **self.headers},
        )

    def answer(self, response: httpx.Response) -> T:
        """The call's result, or the typed error the gateway answered with."""
        raise_for_error(response)
        return self.read(response)


def raise_for_error(response: httpx.Response) -> None:
    """Raise the typed error of an error answer (``{"error": {"type", "message",
    "request_id"}}``) with its Retry-After and request id; a body of another shape (a proxy's
    page) is an UpstreamError."""
    if response.is_success:
        return
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = error_from_payload(
        payload,
        status_code=response.status_code,
        retry_after=retry_after_seconds(response.headers),
    )
    if error.request_id is None:
        error.request_id = response.headers.get("X-Request-ID")
    raise error


def read_model(model: type[ModelT]) -> Callable[[httpx.Response], ModelT]:
    def read(response: httpx.Response) -> ModelT:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise UpstreamError(
                f"{response.request.method} {response.request.url.path} answered outside the "
                f"{model.__name__} contract ({validation_message(exc, whole=None)}); is "
                "boig-client the gateway's version?"
            ) from exc

    return read


def read_bytes(response: httpx.Response) -> bytes:
    return response.content


@contextmanager
def checked_locally() -> Iterator[None]:
    """Arguments that break a wire contract become the InvalidInput the gateway would send."""
    try:
        yield
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc, whole=None)) from exc


def _json_call(
    method: str,
    path: str,
    body: BaseModel,
    read: Callable[[httpx.Response], T],
    headers: Mapping[str, str] | None = None,
) -> Call[T]:
    content = body.model_dump_json().encode()
    return Call(method, path, read, content=content, headers={**JSON_HEADERS, **(headers or {})})


def _segment(value: str) -> str:
    """An id as one path segment: an id never reaches another route."""
    if not value:
        raise InvalidInput("an id must not be empty")
    return quote(value, safe="")


def _context(value: ContextInput) -> Context:
    return value if isinstance(value, Context) else Context.model_validate(value)


def _target(value: TargetInput) -> KpiTarget:
    if value is None:
        return KpiTarget()
    return value if isinstance(value, KpiTarget) else KpiTarget.model_validate(value)


def creative_file(source: CreativeSource, index: int) -> tuple[str, bytes]:
    """A creative's file name and bytes; an image in memory is encoded as PNG."""
    if isinstance(source, bytes | bytearray | memoryview):
        return f"creative-{index + 1}", bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return path.name, path.read_bytes()
    if isinstance(source, SavableImage):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return f"creative-{index + 1}.png", buffer.getvalue()
    raise TypeError(
        f"creative {index + 1} is a {type(source).__name__}: give a file path, bytes or an "
        "image with a save() method"
    )


def score(
    context: ContextInput,
    target: TargetInput,
    creatives: Creatives,
    *,
    reward: RewardName = "match",
    max_edits: int = 0,
    targets: Sequence[TargetDescription] = (),
) -> Call[ScoreResponse]:
    if isinstance(creatives, str | bytes | os.PathLike | SavableImage):
        raise TypeError("creatives: give a list of creatives (or a mapping of id to creative)")
    if isinstance(creatives, Mapping):
        named = True
        files = [
            (str(key), creative_file(src, i)) for i, (key, src) in enumerate(creatives.items())
        ]
    else:
        named = False
        files = [(f"creative-{i + 1}", creative_file(src, i)) for i, src in enumerate(creatives)]
    with checked_locally():
        request = ScoreRequest(
            context=_context(context),
            target=_target(target),
            reward=reward,
            max_edits=max_edits,
            targets=list(targets),
            creatives=[Creative(id=key, data=data) for key, (_, data) in files],
        )
    read = read_model(ScoreResponse)
    if named:
        # Ids of the caller's choosing travel as they are: JSON (base64 images).
        return _json_call("POST", "/v1/score", request, read)
    # Files travel as files (raw bytes, no base64); the gateway names each after its file.
    return Call(
        "POST",
        "/v1/score",
        read,
        data={"request": request.model_dump_json(exclude={"creatives"})},
        files=[("creatives", (name, data, _media_type(name))) for _, (name, data) in files],
    )


def _media_type(filename: str) -> str:
    # The gateway sniffs the bytes; the part's type is for proxies and logs.
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def describe(context: ContextInput, target: TargetInput) -> Call[DescribeResponse]:
    with checked_locally():
        request = DescribeRequest(context=_context(context), target=_target(target))
    return _json_call("POST", "/v1/describe", request, read_model(DescribeResponse))


def generate(
    context: ContextInput,
    target: TargetInput,
    *,
    count: int = 1,
    width: int | None = None,
    height: int | None = None,
    seed: int | None = None,
    strategy: Strategy | None = None,
    candidates: int | None = None,
    steps: int | None = None,
    idempotency_key: str | None = None,
) -> Call[JobAccepted]:
    with checked_locally():
        request = GenerateRequest(
            context=_context(context),
            target=_target(target),
            count=count,
            width=width,
            height=height,
            seed=seed,
            strategy=strategy,
            candidates=candidates,
            steps=steps,
        )
    # Always keyed, so that a retry after a lost answer finds the job the first send made
    # instead of queueing a second one.
    key = idempotency_key or f"boig-client-{uuid.uuid4().hex}"
    return _json_call(
        "POST",
        "/v1/generate",
        request,
        read_model(JobAccepted),
        headers={"Idempotency-Key": key},
    )


def job_id(job: JobRef) -> str:
    return job if isinstance(job, str) else job.job_id


def job(ref: JobRef) -> Call[JobStatus]:
    return Call("GET", f"/v1/jobs/{_segment(job_id(ref))}", read_model(JobStatus))


def cancel(ref: JobRef) -> Call[JobStatus]:
    return Call("DELETE", f"/v1/jobs/{_segment(job_id(ref))}", read_model(JobStatus))


def image(ref: str | JobImage) -> Call[bytes]:
    image_id = ref if isinstance(ref, str) else ref.id
    return Call("GET", f"/v1/images/{_segment(image_id)}", read_bytes)


def feedback(
    kpi_name: str,
    kpi_value: float,
    *,
    image_id: str | None = None,
    image: CreativeSource | None = None,
    context: ContextInput | None = None,
    correction: bool = False,
) -> Call[FeedbackRecord]:
    data = creative_file(image, 0)[1] if image is not None else None
    with checked_locally():
        request = FeedbackRequest(
            image_id=image_id,
            image=data,
            context=_context(context) if context is not None else None,
            kpi_name=kpi_name,
            kpi_value=kpi_value,
            correction=correction,
        )
    # Replayable: the same observation again is answered with the record already made.
    return _json_call("POST", "/v1/feedback", request, read_model(FeedbackRecord))


def feedback_page(
    *,
    account: str | None = None,
    kpi_name: str | None = None,
    creative_sha256: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Call[FeedbackPage]:
    with checked_locally():
        query = FeedbackFilter(
            account=account,
            kpi_name=kpi_name,
            creative_sha256=creative_sha256,
            cursor=cursor,
            limit=limit,
        )
    return Call("GET", "/v1/feedback", read_model(FeedbackPage), params=_query(query))


def feedback_record(feedback_id: str) -> Call[FeedbackRecord]:
    return Call("GET", f"/v1/feedback/{_segment(feedback_id)}", read_model(FeedbackRecord))


def checkpoints(name: str) -> Call[CheckpointList]:
    return Call("GET", "/v1/checkpoints", read_model(CheckpointList), params={"name": name})


def decisions(
    *,
    checkpoint: str | None = None,
    action: RetrainAction | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Call[RetrainDecisionPage]:
    with checked_locally():
        query = RetrainDecisionFilter(
            checkpoint=checkpoint, action=action, cursor=cursor, limit=limit
        )
    return Call(
        "GET", "/v1/retrain/decisions", read_model(RetrainDecisionPage), params=_query(query)
    )


def decision(decision_id: str) -> Call[RetrainDecision]:
    return Call(
        "GET", f"/v1/retrain/decisions/{_segment(decision_id)}", read_model(RetrainDecision)
    )


def _query(model: BaseModel) -> dict[str, Any]:
    query: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return query
