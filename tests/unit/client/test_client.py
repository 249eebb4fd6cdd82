"""BoigClient and AsyncBoigClient over a scripted gateway (httpx.MockTransport): retries and
their waits, typed errors, what goes on the wire, and following a job.

The client against the real gateway app is tests/integration/test_python_client.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

import boig_client.client as client_module
import httpx
import pytest
from boig_client import (
    AsyncBoigClient,
    BoigClient,
    InvalidInput,
    Overloaded,
    RateLimited,
    RetryPolicy,
    TimeLimitExceeded,
    UpstreamError,
)
from boig_client.contracts import (
    Context,
    GenerateRequest,
    JobAccepted,
    JobError,
    JobProgress,
    JobState,
    JobStatus,
)
from rich.console import Console

URL = "http://gateway.test"
KEY = "boig_test_key"
CONTEXT = {"account": "acme", "text": "summer sale"}

Answer = httpx.Response | Exception
Handler = Callable[[httpx.Request], httpx.Response]


def status(state: JobState, **fields: Any) -> JobStatus:
    values: dict[str, Any] = {
        "job_id": "job1",
        "state": state,
        "created_at": datetime(2026, 6, 1, tzinfo=UTC),
        "started_at": None,
        "finished_at": None,
        "attempts": 0,
        "cancel_requested": False,
        "queue_position": None,
        "progress": None,
        "request": GenerateRequest(context=Context(account="acme")),
        "outcome": None,
        "images": [],
        "error": None,
    }
    return JobStatus.model_validate(values | fields)


def ok(model: Any, code: int = 200) -> httpx.Response:
    return httpx.Response(code, content=model.model_dump_json(), headers=_json())


def error(code: int, type_: str, message: str = "no", **headers: str) -> httpx.Response:
    body = {"error": {"type": type_, "message": message, "request_id": "req-1"}}
    return httpx.Response(code, json=body, headers=headers)


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


class Script:
    """Answers requests in order and keeps what was sent."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the clients took, instead of taking them."""
    taken: list[float] = []

    async def apause(seconds: float) -> None:
        taken.append(seconds)

    monkeypatch.setattr(client_module, "_pause", taken.append)
    monkeypatch.setattr(client_module, "_apause", apause)
    return taken


@pytest.fixture
def connect(pauses: list[float]) -> Iterator[Callable[..., BoigClient]]:
    transports: list[httpx.Client] = []

    def make(script: Script, **options: Any) -> BoigClient:
        http = httpx.Client(transport=httpx.MockTransport(script))
        transports.append(http)
        return BoigClient(URL, KEY, http_client=http, **options)

    yield make
    for http in transports:
        http.close()


def test_429_and_503_are_retried_after_their_waits_then_the_answer_returns(
    connect: Callable[..., BoigClient], pauses: list[float]
) -> None:
    script = Script(
        error(429, "rate_limited", **{"Retry-After": "2"}),
        error(503, "overloaded"),
        ok(status(JobState.QUEUED, queue_position=1)),
    )
    job = connect(script, retry=RetryPolicy(backoff_seconds=0.5)).job("job1")
    assert job.state is JobState.QUEUED and job.queue_position == 1
    assert len(script.requests) == 3
    assert 2 <= pauses[0] <= 2.2  # the Retry-After, with at most 10% jitter
    assert 0.5 <= pauses[1] <= 1.0  # the second retry's backoff: no Retry-After given
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in script.requests)


def test_a_422_is_raised_at_once_as_invalid_input(
    connect: Callable[..., BoigClient], pauses: list[float]
) -> None:
    script = Script(error(422, "invalid_input", "context.account: too long"))
    with pytest.raises(InvalidInput, match=r"context\.account: too long") as raised:
        connect(script).describe(CONTEXT)
    assert raised.value.request_id == "req-1"
    assert len(script.requests) == 1 and pauses == []


def test_giving_up_raises_the_typed_refusal_with_its_retry_after(
    connect: Callable[..., BoigClient], pauses: list[float]
) -> None:
    script = Script(error(429, "rate_limited", "slow down", **{"Retry-After": "1"}))
    with pytest.raises(RateLimited, match="slow down") as raised:
        connect(script, max_retries=2).checkpoints()
    assert raised.value.retry_after == 1
    assert len(script.requests) == 3 and len(pauses) == 2


def test_a_retry_after_longer_than_the_longest_wait_is_raised_at_once(
    connect: Callable[..., BoigClient], pauses: list[float]
) -> None:
    script = Script(error(503, "overloaded", "queue full", **{"Retry-After": "120"}))
    with pytest.raises(Overloaded) as raised:
        connect(script, retry=RetryPolicy(max_wait_seconds=60)).job("job1")
    assert raised.value.retry_after == 120
    assert len(script.requests) == 1 and pauses == []


def test_generate_is_sent_again_after_a_lost_answer_with_the_same_idempotency_key(
    connect: Callable[..., BoigClient],
) -> None:
    accepted = JobAccepted(job_id="job1", status_url="/v1/jobs/job1", state=JobState.QUEUED)
    script = Script(httpx.ReadTimeout("no answer"), ok(accepted, 202))
    assert connect(script).generate(CONTEXT, count=2, seed=3) == accepted
    first, second = script.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.headers["Idempotency-Key"].startswith("boig-client-")
    assert first.content == second.content
    assert json.loads(first.content)["count"] == 2


def test_each_generate_call_gets_its_own_idempotency_key_unless_given(
    connect: Callable[..., BoigClient],
) -> None:
    accepted = JobAccepted(job_id="job1", status_url="/v1/jobs/job1", state=JobState.QUEUED)
    script = Script(ok(accepted, 202))
    client = connect(script)
    client.generate(CONTEXT)
    client.generate(CONTEXT)
    client.generate(CONTEXT, idempotency_key="order-42")
    keys = [request.headers["Idempotency-Key"] for request in script.requests]
    assert keys[0] != keys[1] and keys[2] == "order-42"


def test_an_unreachable_gateway_is_an_upstream_error_after_the_retries(
    connect: Callable[..., BoigClient],
) -> None:
    script = Script(httpx.ConnectError("connection refused"))
    with pytest.raises(UpstreamError, match=r"GET /v1/checkpoints failed after 3 attempts"):
        connect(script, max_retries=2).checkpoints()
    assert len(script.requests) == 3


def test_answers_outside_the_error_shape_or_the_contract_are_upstream_errors(
    connect: Callable[..., BoigClient],
) -> None:
    page = httpx.Response(502, text="<html>bad gateway</html>", headers={"X-Request-ID": "px"})
    with pytest.raises(UpstreamError, match="502 without an error body") as raised:
        connect(Script(page)).job("job1")
    assert raised.value.request_id == "px"
    wrong = httpx.Response(200, json={"job_id": "job1"})
    with pytest.raises(UpstreamError, match="outside the JobStatus contract"):
        connect(Script(wrong)).job("job1")


def test_arguments_that_break_the_contract_are_refused_before_sending(
    connect: Callable[..., BoigClient],
) -> None:
    script = Script(httpx.Response(500))
    client = connect(script)
    with pytest.raises(InvalidInput, match="account"):
        client.describe({"account": "not a handle!"})
    with pytest.raises(InvalidInput, match="candidates"):
        client.generate(CONTEXT, strategy="prompt", candidates=4)
    with pytest.raises(InvalidInput, match="id"):
        client.score(CONTEXT, None, {"bad id/": b"\x89PNG"})
    with pytest.raises(InvalidInput, match="image_id"):
        client.feedback("likes", 3, image_id="a", image=b"png", context=CONTEXT)
    with pytest.raises(TypeError, match="list of creatives"):
        client.score(CONTEXT, None, b"one image")  # type: ignore[arg-type]
    assert script.requests == []


class FakeImage:
    """What the client needs of a PIL image."""

    def save(self, fp: IO[bytes], format: str | None = None) -> None:
        fp.write(b"\x89PNG fake " + (format or "").encode())


def test_a_list_of_creatives_travels_as_files_and_a_mapping_as_json(
    connect: Callable[..., BoigClient], tmp_path: Any
) -> None:
    picture = tmp_path / "summer ad.png"
    picture.write_bytes(b"\x89PNG file")
    script = Script(httpx.Response(500, json={}))
    client = connect(script, max_retries=0)
    with pytest.raises(UpstreamError):
        client.score(CONTEXT, {"level": "low"}, [picture, b"GIF89a", FakeImage()], max_edits=2)
    with pytest.raises(UpstreamError):
        client.score(
            CONTEXT, None, {"hero": b"\x89PNG one", "alt": FakeImage()}, reward="contrastive"
        )

    files, named = script.requests
    assert files.headers["Content-Type"].startswith("multipart/form-data")
    body = files.content
    for part in (
        b'filename="summer ad.png"',
        b"\x89PNG file",
        b'filename="creative-2"',
        b"GIF89a",
        b'filename="creative-3.png"',
        b"\x89PNG fake PNG",
    ):
        assert part in body
    spec_start = body.index(b'name="request"')
    spec = json.loads(body[spec_start:].split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0])
    assert spec["target"] == {"name": "likes", "level": "low"} and spec["max_edits"] == 2
    assert "creatives" not in spec

    assert named.headers["Content-Type"] == "application/json"
    sent = json.loads(named.content)
    assert [c["id"] for c in sent["creatives"]] == ["hero", "alt"]
    assert sent["reward"] == "contrastive" and sent["target"]["level"] == "high"


def test_ids_are_one_path_segment(connect: Callable[..., BoigClient]) -> None:
    script = Script(httpx.Response(200, content=b"\x89PNG"))
    assert connect(script).image("../jobs/x") == b"\x89PNG"
    assert script.requests[0].url.raw_path == b"/v1/images/..%2Fjobs%2Fx"


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOIG_URL", "http://boig.internal:9000/")
    monkeypatch.setenv("BOIG_API_KEY", "boig_env_key")
    client = BoigClient()
    assert client.base_url == "http://boig.internal:9000"
    client.close()
    monkeypatch.delenv("BOIG_API_KEY")
    with pytest.raises(ValueError, match="BOIG_API_KEY"):
        BoigClient()


def test_wait_draws_the_workers_steps_and_returns_the_finished_job(
    connect: Callable[..., BoigClient], pauses: list[float]
) -> None:
    running = status(
        JobState.RUNNING,
        progress=JobProgress(stage="denoising", step=2, total=4, eta_seconds=3.0),
    )
    done = status(JobState.SUCCEEDED)
    script = Script(ok(status(JobState.QUEUED, queue_position=2)), ok(running), ok(done))
    console = Console(record=True, force_terminal=True, width=120)
    final = connect(script).wait("job1", progress=console, poll_interval=0.25)
    assert final == done
    assert pauses == [0.25, 0.25]
    drawn = console.export_text()
    assert "job1" in drawn and "4/4 steps" in drawn and "succeeded" in drawn


def test_wait_raises_a_failed_jobs_own_error(connect: Callable[..., BoigClient]) -> None:
    failed = status(
        JobState.FAILED,
        error=JobError(type="time_limit_exceeded", message="ran past 600 s"),
    )
    with pytest.raises(TimeLimitExceeded, match="job job1 failed: ran past 600 s"):
        connect(Script(ok(failed))).wait("job1", progress=False)
    returned = connect(Script(ok(failed))).wait("job1", progress=False, raise_on_failure=False)
    assert returned.state is JobState.FAILED


def test_wait_gives_up_after_its_timeout_and_says_the_job_goes_on(
    connect: Callable[..., BoigClient],
) -> None:
    script = Script(ok(status(JobState.QUEUED, queue_position=1)))
    with pytest.raises(TimeoutError, match="job job1 is still queued after 0 s; it goes on"):
        connect(script).wait("job1", progress=False, timeout=0)


async def test_the_async_client_retries_and_answers_alike(pauses: list[float]) -> None:
    accepted = JobAccepted(job_id="job1", status_url="/v1/jobs/job1", state=JobState.QUEUED)
    script = Script(
        error(503, "overloaded", **{"Retry-After": "1"}),
        httpx.ConnectError("refused"),
        ok(accepted, 202),
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as http:
        boig = AsyncBoigClient(URL, KEY, http_client=http)
        assert await boig.generate(CONTEXT) == accepted
        with pytest.raises(InvalidInput):
            await boig.describe({"account": ""})
    assert len(script.requests) == 3 and 1 <= pauses[0] <= 1.1
    assert len({request.headers["Idempotency-Key"] for request in script.requests}) == 1


async def test_the_async_client_waits_for_a_job(pauses: list[float]) -> None:
    script = Script(ok(status(JobState.RUNNING)), ok(status(JobState.CANCELED)))
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as http:
        boig = AsyncBoigClient(URL, KEY, http_client=http)
        final = await boig.wait("job1", progress=False, poll_interval=0.1)
    assert final.state is JobState.CANCELED and pauses == [0.1]


def test_an_image_with_a_save_method_is_sent_as_png() -> None:
    from boig_client.calls import creative_file

    assert creative_file(FakeImage(), 4) == ("creative-5.png", b"\x89PNG fake PNG")
    assert creative_file(bytearray(b"abc"), 0) == ("creative-1", b"abc")
    with pytest.raises(TypeError, match="creative 1 is a int"):
        creative_file(7, 0)  # type: ignore[arg-type]
