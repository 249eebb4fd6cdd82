"""BoigClient and AsyncBoigClient: the BOIG public API, typed with its wire contracts.

Both send the calls of ``boig_client.calls`` with the retries of ``boig_client.retries``; they
differ only in how they send and wait. Every error answer is raised as the exception its
``type`` names (``boig_client.errors``: InvalidInput, Unauthorized, RateLimited, ...), and a
gateway that cannot be reached as UpstreamError.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Self, TypeVar

import httpx

from boig_client import calls
from boig_client.calls import Call, ContextInput, Creatives, CreativeSource, JobRef, TargetInput
from boig_client.contracts import (
    CheckpointList,
    DescribeResponse,
    FeedbackPage,
    FeedbackRecord,
    JobAccepted,
    JobImage,
    JobStatus,
    RetrainAction,
    RetrainDecision,
    RetrainDecisionPage,
    RewardName,
    ScoreResponse,
    Strategy,
    TargetDescription,
)
from boig_client.jobs import JobWatcher, ProgressOption
from boig_client.retries import Attempts, RetryPolicy

T = TypeVar("T")

URL_ENV = "BOIG_URL"
KEY_ENV = "BOIG_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8100"
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
"""Scoring on a CPU deployment can take minutes for a batch; connecting should not."""
DEFAULT_CHECKPOINT = "boigllm"

try:
    __version__ = version("boig-client")
except PackageNotFoundError:  # imported from a source tree
    __version__ = "0.0.0"


class _Options:
    """What both clients are configured with: where, who, how long, how often."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        http_base_url: str,
        max_retries: int,
        retry: RetryPolicy | None,
    ) -> None:
        url = base_url or http_base_url or os.environ.get(URL_ENV) or DEFAULT_URL
        self.base_url = url.rstrip("/")
        key = api_key or os.environ.get(KEY_ENV)
        if not key:
            raise ValueError(f"no API key: pass api_key= or set {KEY_ENV}")
        self.headers = {
            "Authorization": f"Bearer {key}",
            "User-Agent": f"boig-client/{__version__}",
        }
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.rng = random.Random()

    def attempts(self, call: Call[T]) -> Attempts:
        return Attempts(self.retry, replayable=call.replayable, rng=self.rng, what=call.what)


class BoigClient:
    """The BOIG API over one ``httpx.Client`` (connections are reused: keep one client).

    ``base_url`` and ``api_key`` default to the environment's ``BOIG_URL`` (else
    ``http://127.0.0.1:8100``) and ``BOIG_API_KEY``. ``max_retries`` is how often a call is
    sent again after a 429, a 503 or a transport failure (see RetryPolicy; ``retry`` sets
    every part of it). ``http_client`` replaces the client made here (its owner closes it).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._options = _Options(
            base_url,
            api_key,
            http_base_url=str(http_client.base_url) if http_client else "",
            max_retries=max_retries,
            retry=retry,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)

    @property
    def base_url(self) -> str:
        return self._options.base_url

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        attempts = self._options.attempts(call)
        while True:
            request = call.request(self._http, self.base_url, self._options.headers)
            try:
                response = self._http.send(request)
            except httpx.TransportError as error:
                delay = attempts.after_error(error)
            else:
                answered = attempts.after_response(response)
                if answered is None:
                    return call.answer(response)
                delay = answered
            _pause(delay)

    def score(
        self,
        context: ContextInput,
        target: TargetInput,
        creatives: Creatives,
        *,
        reward: RewardName = "match",
        max_edits: int = 0,
        targets: Sequence[TargetDescription] = (),
    ) -> ScoreResponse:
        """Rank ``creatives`` for ``context`` and the KPI ``target``, best first.

        A list of paths, bytes or images is sent as files, each reported under its file's
        stem (``creative-N`` for bytes and images); a mapping reports each under its key.
        ``max_edits`` asks for up to that many actionable edits per creative.
        """
        return self._send(
            calls.score(
                context, target, creatives, reward=reward, max_edits=max_edits, targets=targets
            )
        )

    def describe(self, context: ContextInput, target: TargetInput = None) -> DescribeResponse:
        """How an image for ``context`` should look to reach ``target``: a creative brief."""
        return self._send(calls.describe(context, target))

    def generate(
        self,
        context: ContextInput,
        target: TargetInput = None,
        *,
        count: int = 1,
        width: int | None = None,
        height: int | None = None,
        seed: int | None = None,
        strategy: Strategy | None = None,
        candidates: int | None = None,
        steps: int | None = None,
        idempotency_key: str | None = None,
    ) -> JobAccepted:
        """Start a generation job; follow it with ``wait``. Sent with an Idempotency-Key (a
        fresh one unless given), so that a retry never queues a second job."""
        return self._send(
            calls.generate(
                context,
                target,
                count=count,
                width=width,
                height=height,
                seed=seed,
                strategy=strategy,
                candidates=candidates,
                steps=steps,
                idempotency_key=idempotency_key,
            )
        )

    def job(self, job: JobRef) -> JobStatus:
        """A job's state, queue position, progress and, once done, its images."""
        return self._send(calls.job(job))

    def wait(
        self,
        job: JobRef,
        *,
        progress: ProgressOption = None,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        raise_on_failure: bool = True,
    ) -> JobStatus:
        """Poll ``job`` until it ends and return its final status, drawing a progress bar
        (``progress``: True, False, a rich Console, or None for "when standard error is a
        terminal"). A failed job raises its typed error unless ``raise_on_failure`` is
        False; a canceled one is returned. TimeoutError after ``timeout`` seconds."""
        job_id = calls.job_id(job)
        with JobWatcher(
            job_id, progress=progress, timeout=timeout, poll_interval=poll_interval
        ) as watcher:
            while True:
                status = self.job(job_id)
                if watcher.finished(status):
                    return watcher.outcome(status, raise_on_failure=raise_on_failure)
                _pause(watcher.next_delay())

    def cancel(self, job: JobRef) -> JobStatus:
        """Cancel a job: a queued one at once, a running one at its next denoising step."""
        return self._send(calls.cancel(job))

    def image(self, image: str | JobImage) -> bytes:
        """A generated image's PNG bytes."""
        return self._send(calls.image(image))

    def feedback(
        self,
        kpi_name: str,
        kpi_value: float,
        *,
        image_id: str | None = None,
        image: CreativeSource | None = None,
        context: ContextInput | None = None,
        correction: bool = False,
    ) -> FeedbackRecord:
        """Record the KPI a creative observed once posted: a generated image by ``image_id``,
        or any image with its ``context`` (``posted_at`` required). The same observation
        again returns the same record; another value needs ``correction=True``."""
        return self._send(
            calls.feedback(
                kpi_name,
                kpi_value,
                image_id=image_id,
                image=image,
                context=context,
                correction=correction,
            )
        )

    def feedback_page(
        self,
        *,
        account: str | None = None,
        kpi_name: str | None = None,
        creative_sha256: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> FeedbackPage:
        """This key's feedback, newest first; pass ``next_cursor`` as ``cursor`` for more."""
        return self._send(
            calls.feedback_page(
                account=account,
                kpi_name=kpi_name,
                creative_sha256=creative_sha256,
                cursor=cursor,
                limit=limit,
            )
        )

    def feedback_record(self, feedback_id: str) -> FeedbackRecord:
        return self._send(calls.feedback_record(feedback_id))

    def checkpoints(self, name: str = DEFAULT_CHECKPOINT) -> CheckpointList:
        """A model's published checkpoints, newest first, and which one is served."""
        return self._send(calls.checkpoints(name))

    def decisions(
        self,
        *,
        checkpoint: str | None = None,
        action: RetrainAction | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> RetrainDecisionPage:
        """Why each checkpoint was promoted, rejected or rolled back, newest first."""
        return self._send(
            calls.decisions(checkpoint=checkpoint, action=action, cursor=cursor, limit=limit)
        )

    def decision(self, decision_id: str) -> RetrainDecision:
        return self._send(calls.decision(decision_id))


class AsyncBoigClient:
    """BoigClient's methods as coroutines, over one ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._options = _Options(
            base_url,
            api_key,
            http_base_url=str(http_client.base_url) if http_client else "",
            max_retries=max_retries,
            retry=retry,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    @property
    def base_url(self) -> str:
        return self._options.base_url

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempts = self._options.attempts(call)
        while True:
            request = call.request(self._http, self.base_url, self._options.headers)
            try:
                response = await self._http.send(request)
            except httpx.TransportError as error:
                delay = attempts.after_error(error)
            else:
                answered = attempts.after_response(response)
                if answered is None:
                    return call.answer(response)
                delay = answered
            await _apause(delay)

    async def score(
        self,
        context: ContextInput,
        target: TargetInput,
        creatives: Creatives,
        *,
        reward: RewardName = "match",
        max_edits: int = 0,
        targets: Sequence[TargetDescription] = (),
    ) -> ScoreResponse:
        """See BoigClient.score."""
        # Reading and encoding the files is blocking work: off the event loop.
        call = await asyncio.to_thread(
            calls.score,
            context,
            target,
            creatives,
            reward=reward,
            max_edits=max_edits,
            targets=targets,
        )
        return await self._send(call)

    async def describe(self, context: ContextInput, target: TargetInput = None) -> DescribeResponse:
        """See BoigClient.describe."""
        return await self._send(calls.describe(context, target))

    async def generate(
        self,
        context: ContextInput,
        target: TargetInput = None,
        *,
        count: int = 1,
        width: int | None = None,
        height: int | None = None,
        seed: int | None = None,
        strategy: Strategy | None = None,
        candidates: int | None = None,
        steps: int | None = None,
        idempotency_key: str | None = None,
    ) -> JobAccepted:
        """See BoigClient.generate."""
        return await self._send(
            calls.generate(
                context,
                target,
                count=count,
                width=width,
                height=height,
                seed=seed,
                strategy=strategy,
                candidates=candidates,
                steps=steps,
                idempotency_key=idempotency_key,
            )
        )

    async def job(self, job: JobRef) -> JobStatus:
        """See BoigClient.job."""
        return await self._send(calls.job(job))

    async def wait(
        self,
        job: JobRef,
        *,
        progress: ProgressOption = None,
        # BoigClient.wait's signature: a deadline of the wait (the job goes on after it).
        timeout: float | None = None,  # noqa: ASYNC109
        poll_interval: float = 0.5,
        raise_on_failure: bool = True,
    ) -> JobStatus:
        """See BoigClient.wait."""
        job_id = calls.job_id(job)
        with JobWatcher(
            job_id, progress=progress, timeout=timeout, poll_interval=poll_interval
        ) as watcher:
            while True:
                status = await self.job(job_id)
                if watcher.finished(status):
                    return watcher.outcome(status, raise_on_failure=raise_on_failure)
                await _apause(watcher.next_delay())

    async def cancel(self, job: JobRef) -> JobStatus:
        """See BoigClient.cancel."""
        return await self._send(calls.cancel(job))

    async def image(self, image: str | JobImage) -> bytes:
        """See BoigClient.image."""
        return await self._send(calls.image(image))

    async def feedback(
        self,
        kpi_name: str,
        kpi_value: float,
        *,
        image_id: str | None = None,
        image: CreativeSource | None = None,
        context: ContextInput | None = None,
        correction: bool = False,
    ) -> FeedbackRecord:
        """See BoigClient.feedback."""
        call = await asyncio.to_thread(
            calls.feedback,
            kpi_name,
            kpi_value,
            image_id=image_id,
            image=image,
            context=context,
            correction=correction,
        )
        return await self._send(call)

    async def feedback_page(
        self,
        *,
        account: str | None = None,
        kpi_name: str | None = None,
        creative_sha256: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> FeedbackPage:
        """See BoigClient.feedback_page."""
        return await self._send(
            calls.feedback_page(
                account=account,
                kpi_name=kpi_name,
                creative_sha256=creative_sha256,
                cursor=cursor,
                limit=limit,
            )
        )

    async def feedback_record(self, feedback_id: str) -> FeedbackRecord:
        return await self._send(calls.feedback_record(feedback_id))

    async def checkpoints(self, name: str = DEFAULT_CHECKPOINT) -> CheckpointList:
        """See BoigClient.checkpoints."""
        return await self._send(calls.checkpoints(name))

    async def decisions(
        self,
        *,
        checkpoint: str | None = None,
        action: RetrainAction | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> RetrainDecisionPage:
        """See BoigClient.decisions."""
        return await self._send(
            calls.decisions(checkpoint=checkpoint, action=action, cursor=cursor, limit=limit)
        )

    async def decision(self, decision_id: str) -> RetrainDecision:
        return await self._send(calls.decision(decision_id))


# Module-level so that tests can stand in for the clock.
def _pause(seconds: float) -> None:
    time.sleep(seconds)


async def _apause(seconds: float) -> None:
    await asyncio.sleep(seconds)
