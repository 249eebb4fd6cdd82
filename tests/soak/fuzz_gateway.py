"""Schemathesis against the gateway's own /openapi.json: every route, valid and invalid data.

Each operation gets ``max_examples`` schema-valid cases and as many schema-violating ones
(Hypothesis, derandomized: a rerun sends the same requests). Gating, per answer: no 5xx but
a typed 503 overloaded (designed backpressure), every 4xx/5xx in the one error shape
``{"error": {"type", "message", "request_id"}}``, and without a key no /v1 route answers
below 400. Schemathesis's schema conformance checks run too; what they find is reported
apart, as a mismatch between the published OpenAPI and the service.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

DESIGNED_5XX = frozenset({(503, "overloaded")})


@dataclass
class Finding:
    run: str
    operation: str
    kind: str  # server_error, untyped_error, auth_bypass, transport, contract
    status: int
    detail: str
    request_id: str | None
    curl: str


@dataclass
class FuzzResult:
    run: str
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    cases: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def gating(self) -> list[Finding]:
        return [f for f in self.findings if f.kind != "contract"]


def _error_shape(response: Any) -> tuple[str | None, str]:
    """(error type, "type: message") for a body in the one error shape, else (None, what
    the body was)."""
    try:
        body = response.json()
    except ValueError:
        return None, f"not JSON: {response.content[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if (
        isinstance(error, dict)
        and set(body) == {"error"}
        and isinstance(error.get("type"), str)
        and isinstance(error.get("message"), str)
        and "request_id" in error
    ):
        return str(error["type"]), f"{error['type']}: {error['message']}"
    return None, f"not the typed error shape: {response.content[:200]!r}"


def _header(response: Any, name: str) -> str | None:
    values = response.headers.get(name.lower())
    if isinstance(values, list):
        return str(values[0]) if values else None
    return None if values is None else str(values)


def fuzz(
    *,
    run: str,
    base_url: str,
    headers: dict[str, str] | None,
    max_examples: int,
    budget_seconds: float,
    request_timeout: float = 20.0,
) -> FuzzResult:
    """Fuzz every operation of the gateway's schema; ``headers`` (the API key) or none.

    Cases still to send once ``budget_seconds`` have passed are skipped and counted."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=30)
    result = FuzzResult(run=run)
    session = requests.Session()
    started = time.monotonic()
    operations = []
    for outcome in schema.get_all_operations():
        if isinstance(outcome, Ok):
            operations.append(outcome.ok())
        else:
            result.findings.append(
                Finding(run, "schema", "contract", 0, str(outcome.err()), None, "")
            )
    slices = [(op, mode) for op in operations for mode in GenerationMode]
    for index, (operation, mode) in enumerate(slices):
        # An even share of the time left per operation and mode: one slow route (the
        # describer's LLM) must not starve the others.
        remaining = started + budget_seconds - time.monotonic()
        deadline = time.monotonic() + remaining / (len(slices) - index)
        label = f"{operation.method.upper()} {operation.path}"
        statuses = result.statuses.setdefault(label, Counter())
        strategy = operation.as_strategy(mode, headers=dict(headers) if headers else None)
        send = _sender(
            result=result,
            deadline=deadline,
            call=functools.partial(
                _send_and_check,
                label=label,
                statuses=statuses,
                result=result,
                base_url=base_url,
                session=session,
                headers=headers,
                request_timeout=request_timeout,
            ),
        )
        run_cases = settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(case=strategy)(send))
        # A schema too narrow for negative data has nothing to send.
        with contextlib.suppress(Unsatisfiable):
            run_cases()
    result.seconds = time.monotonic() - started
    return result


def _sender(
    *,
    result: FuzzResult,
    deadline: float,
    call: Callable[[Any], None],
) -> Callable[[Any], None]:
    """The Hypothesis test body for one operation and mode: send the case unless its share
    of the time is spent."""

    def send(case: Any) -> None:
        if time.monotonic() > deadline:
            result.skipped += 1
            return
        result.cases += 1
        call(case)

    return send


def _send_and_check(
    case: Any,
    *,
    label: str,
    statuses: Counter[str],
    result: FuzzResult,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str] | None,
    request_timeout: float,
) -> None:
    def finding(kind: str, status: int, detail: str, request_id: str | None) -> None:
        result.findings.append(
            Finding(
                run=result.run,
                operation=label,
                kind=kind,
                status=status,
                detail=detail,
                request_id=request_id,
                curl=case.as_curl_command(base_url=base_url),
            )
        )

    try:
        response = case.call(base_url=base_url, session=session, timeout=request_timeout)
    except requests.Timeout:
        # Our patience, not the service's answer: counted and printed, not gating.
        statuses[f"no answer in {request_timeout:.0f} s"] += 1
        return
    except requests.RequestException as exc:
        statuses["transport error"] += 1
        finding("transport", 0, repr(exc), None)
        return
    status = response.status_code
    request_id = _header(response, "x-request-id")
    error_type: str | None = None
    described = ""
    if status >= 400:
        error_type, described = _error_shape(response)
        if error_type is None:
            finding("untyped_error", status, described, request_id)
    statuses[f"{status} {error_type}" if error_type else str(status)] += 1
    if status >= 500 and (status, error_type) not in DESIGNED_5XX:
        finding("server_error", status, described, request_id)
    if headers is None and label.split(" ", 1)[1].startswith("/v1/") and status < 400:
        finding("auth_bypass", status, "a /v1 route answered without a valid key", request_id)
    try:
        case.validate_response(
            response, checks=[response_schema_conformance, content_type_conformance]
        )
    except Exception as exc:
        failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for failure in failures:
            title = getattr(failure, "title", type(failure).__name__)
            finding("contract", status, str(title), request_id)


def summarize(result: FuzzResult) -> list[str]:
    lines = [
        f"{result.run}: {result.cases} cases in {result.seconds:.0f} s"
        + (f" ({result.skipped} skipped at the time budget)" if result.skipped else "")
    ]
    for label, statuses in result.statuses.items():
        counts = ", ".join(f"{key} x{n}" for key, n in statuses.most_common())
        lines.append(f"  {label:<28} {counts or '-'}")
    gating = result.gating()
    lines.append(
        f"  5xx / untyped errors / auth bypass: {len(gating)}" + ("" if gating else " (none)")
    )
    for (operation, kind, status, detail), examples in _grouped(gating).items():
        first = examples[0]
        lines.append(f"    {kind} {status} on {operation} x{len(examples)}: {detail[:300]}")
        lines.append(f"      request id {first.request_id}; repro: {first.curl[:400]}")
    contract = [f for f in result.findings if f.kind == "contract"]
    if contract:
        lines.append("  schema conformance (published OpenAPI vs answers, not gating):")
        for (operation, _, status, detail), examples in _grouped(contract).items():
            lines.append(f"    {operation} {status}: {detail} x{len(examples)}")
    return lines


def _grouped(findings: list[Finding]) -> dict[tuple[str, str, int, str], list[Finding]]:
    groups: dict[tuple[str, str, int, str], list[Finding]] = {}
    for item in findings:
        key = (item.operation, item.kind, item.status, item.detail[:120])
        groups.setdefault(key, []).append(item)
    return groups
