"""Many clients on the gateway's `POST /v1/score` at once: statuses, latency, backpressure.

Each client sends one small creative with either the cached brief (one context, warmed up
before the run, so the describer answers from its cache) or a fresh one (a context never
seen, so the describer has to generate). 429 and 503 are the designed refusals: a client
waits what Retry-After says (1 s when the header is missing, which is counted) and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

CACHED_REQUEST: dict[str, Any] = {
    "context": {
        "account": "sunbrew",
        "text": "Summer is here: iced coffee, half price all weekend",
        "keywords": ["coffee", "summer", "sale"],
    },
    "target": {"name": "likes", "level": "high"},
    "reward": "match",
}
_ACCOUNTS = ("sunbrew", "acme", "northpeak", "bloomco", "urbanfit")
_TOPICS = ("winter boots", "iced coffee", "garden chairs", "running shoes", "gift cards")
_LEVELS = ("low", "medium", "high")

DESIGNED_REFUSALS = frozenset({(429, "rate_limited"), (503, "overloaded")})
"""(status, error type) pairs that are backpressure by design, not failures."""

_PENDING_AT_REFUSAL = re.compile(r"the describer has (\d+) requests waiting")


def fresh_request(index: int, rng: random.Random) -> dict[str, Any]:
    """A context the describer has not seen: a new text every time, varied brand and level."""
    topic = rng.choice(_TOPICS)
    return {
        "context": {
            "account": rng.choice(_ACCOUNTS),
            "text": f"{topic.capitalize()}, offer {index}: this week only",
            "keywords": topic.split(),
        },
        "target": {"name": rng.choice(("likes", "clicks")), "level": rng.choice(_LEVELS)},
        "reward": "match",
    }


def typed_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """(error type, message) of a body in the one BOIG error shape, else (None, why not)."""
    try:
        body = response.json()
    except ValueError:
        return None, f"not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if (
        not isinstance(error, dict)
        or set(body) != {"error"}
        or not isinstance(error.get("type"), str)
        or not isinstance(error.get("message"), str)
        or "request_id" not in error
    ):
        return None, f"not the typed error shape: {response.text[:200]!r}"
    return error["type"], error["message"]


@dataclass
class Outcome:
    kind: str  # "cached" or "fresh"
    status: int  # 0: no HTTP answer (transport error or cut off at the end)
    seconds: float
    error_type: str | None = None
    message: str | None = None
    retry_after: str | None = None
    request_id: str | None = None


@dataclass
class PendingSamples:
    """The describer's pending model work (``boig_model_pending_requests``), sampled from its
    /metrics while the load runs."""

    estimates: list[int] = field(default_factory=list)
    errors: int = 0


@dataclass
class LoadResult:
    clients: int
    seconds: float
    outcomes: list[Outcome]
    pending: PendingSamples
    drain_seconds: float

    def unexpected(self) -> list[Outcome]:
        """Answers that are neither a 200 nor a designed, typed refusal."""
        return [
            o
            for o in self.outcomes
            if o.status != 200 and (o.status, o.error_type) not in DESIGNED_REFUSALS
        ]

    def pending_at_refusal(self) -> list[int]:
        """The describer's own count of pending work, as its overloaded 503s state it."""
        found = (_PENDING_AT_REFUSAL.search(o.message or "") for o in self.outcomes)
        return [int(match.group(1)) for match in found if match]


async def _post_score(
    client: httpx.AsyncClient, body: Mapping[str, Any], creative: tuple[str, bytes]
) -> httpx.Response:
    name, data = creative
    return await client.post(
        "/v1/score",
        data={"request": json.dumps(body)},
        files=[("creatives", (name, data, "image/png"))],
    )


async def _client(
    client: httpx.AsyncClient,
    *,
    deadline: float,
    fresh_share: float,
    creative: tuple[str, bytes],
    rng: random.Random,
    counter: list[int],
    outcomes: list[Outcome],
) -> None:
    while time.monotonic() < deadline:
        fresh = rng.random() < fresh_share
        counter[0] += 1
        body = fresh_request(counter[0], rng) if fresh else CACHED_REQUEST
        started = time.perf_counter()
        try:
            response = await _post_score(client, body, creative)
        except httpx.HTTPError as exc:
            outcomes.append(
                Outcome(
                    "fresh" if fresh else "cached",
                    0,
                    time.perf_counter() - started,
                    None,
                    repr(exc),
                )
            )
            await asyncio.sleep(1.0)
            continue
        outcome = Outcome(
            "fresh" if fresh else "cached",
            response.status_code,
            time.perf_counter() - started,
            retry_after=response.headers.get("retry-after"),
            request_id=response.headers.get("x-request-id"),
        )
        if response.status_code != 200:
            outcome.error_type, outcome.message = typed_error(response)
        outcomes.append(outcome)
        if response.status_code in (429, 503):
            wait = float(outcome.retry_after) if outcome.retry_after else 1.0
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))


def describer_pending_estimate(metrics_text: str) -> int:
    """The describer's gauge of computations admitted and not yet done."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "boig_model_pending_requests":
            return round(
                sum(s.value for s in family.samples if s.labels.get("service") == "describer")
            )
    return 0


async def _sample_pending(
    describer_url: str, stop: asyncio.Event, samples: PendingSamples, interval: float
) -> None:
    async with httpx.AsyncClient(base_url=describer_url, timeout=5) as client:
        while not stop.is_set():
            try:
                response = await client.get("/metrics")
                samples.estimates.append(describer_pending_estimate(response.text))
            except httpx.HTTPError:
                samples.errors += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


async def warm_cached_brief(
    gateway_url: str, headers: Mapping[str, str], creative: tuple[str, bytes]
) -> float:
    """Score the cached brief once (the describer writes and caches it); seconds it took."""
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway_url, headers=dict(headers), timeout=300) as c:
        response = await _post_score(c, CACHED_REQUEST, creative)
    response.raise_for_status()
    return time.perf_counter() - started


async def run_load(
    *,
    gateway_url: str,
    describer_url: str,
    headers: Mapping[str, str],
    creative: tuple[str, bytes],
    clients: int,
    seconds: float,
    fresh_share: float,
    drain_timeout: float,
    seed: int = 0,
) -> LoadResult:
    """``clients`` concurrent clients for ``seconds``; requests still out after that get
    ``drain_timeout`` more seconds to finish, then count as cut off (status 0)."""
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    samples = PendingSamples()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(seconds + drain_timeout, connect=10)
    async with httpx.AsyncClient(
        base_url=gateway_url, headers=dict(headers), limits=limits, timeout=timeout
    ) as client:
        sampler = asyncio.create_task(_sample_pending(describer_url, stop, samples, 0.5))
        started = time.monotonic()
        deadline = started + seconds
        counter = [0]
        tasks = [
            asyncio.create_task(
                _client(
                    client,
                    deadline=deadline,
                    fresh_share=fresh_share,
                    creative=creative,
                    rng=random.Random(rng.random()),
                    counter=counter,
                    outcomes=outcomes,
                )
            )
            for _ in range(clients)
        ]
        await asyncio.sleep(seconds)
        _, still_out = await asyncio.wait(tasks, timeout=drain_timeout)
        for task in still_out:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        drained = time.monotonic() - deadline
        stop.set()
        await sampler
    outcomes.extend(Outcome("cut off", 0, drain_timeout) for _ in still_out)
    return LoadResult(clients, seconds, outcomes, samples, drained)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(result: LoadResult, *, max_pending: int) -> list[str]:
    """The figures as printable lines."""
    lines = []
    total = len(result.outcomes)
    by_status = Counter((o.status, o.error_type) for o in result.outcomes)
    lines.append(
        f"{total} requests from {result.clients} clients in {result.seconds:.0f} s "
        f"(+{result.drain_seconds:.1f} s for the last to finish): {total / result.seconds:.1f}/s"
    )
    for (status, error_type), count in sorted(by_status.items(), key=lambda kv: -kv[1]):
        kinds = Counter(
            o.kind for o in result.outcomes if (o.status, o.error_type) == (status, error_type)
        )
        label = f"{status} {error_type}" if error_type else str(status)
        detail = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        lines.append(f"  {label:<28} {count:>6}  ({detail})")
    for kind in ("cached", "fresh", "all"):
        ok = [o.seconds for o in result.outcomes if o.status == 200 and kind in (o.kind, "all")]
        if ok:
            lines.append(
                f"  200 latency, {kind:<6}: p50 {percentile(ok, 50) * 1000:7.0f} ms, "
                f"p99 {percentile(ok, 99) * 1000:7.0f} ms, "
                f"max {max(ok) * 1000:7.0f} ms (n={len(ok)})"
            )
        else:
            lines.append(f"  200 latency, {kind:<6}: no 200s")
    refusals = [o for o in result.outcomes if o.status in (429, 503)]
    if refusals:
        missing = sum(1 for o in refusals if not o.retry_after)
        lines.append(f"  429/503 without Retry-After: {missing} of {len(refusals)}")
        sources = Counter(_refusal_source(o.message) for o in refusals)
        lines.append("  refused by: " + ", ".join(f"{src} {n}" for src, n in sources.most_common()))
    at_refusal = result.pending_at_refusal()
    estimates = result.pending.estimates
    lines.append(
        f"  describer pending (cap {max_pending}): its overloaded 503s "
        f"said {max(at_refusal) if at_refusal else '-'} at most "
        f"(n={len(at_refusal)}); boig_model_pending_requests every 0.5 s: "
        + (
            f"max {max(estimates)}, median {statistics.median(estimates):.0f} "
            f"(n={len(estimates)}, {result.pending.errors} failed scrapes)"
            if estimates
            else "no samples"
        )
    )
    return lines


def _refusal_source(message: str | None) -> str:
    text = message or ""
    if "describer" in text:
        return "describer"
    if "featurizer" in text:
        return "featurizer"
    if "rate limit" in text:
        return "rate limit"
    return repr(text[:60])
