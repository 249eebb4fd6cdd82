"""The statuses each operation of a service's OpenAPI documents, and those its apps answered in
this test process (``boig_http_requests_total``, which every app of the factory counts), for
the check that the contracts document every answer the tests observe."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from services.common import metrics
from services.tooling.contracts import SERVICES, service_openapi

Operation = tuple[str, str]
"""(method, path template), e.g. ("GET", "/v1/jobs/{job_id}")."""

NOBODY_READS = frozenset({499})
"""Answers to clients that went away (ClientClosedRequest): counted, never received."""


def documented_statuses(openapi: dict[str, Any]) -> dict[Operation, set[int]]:
    return {
        (method.upper(), path): {int(status) for status in operation["responses"]}
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
    }


def answered_statuses() -> dict[str, dict[Operation, set[int]]]:
    """By service, by operation: the statuses answered so far in this process."""
    answered: dict[str, dict[Operation, set[int]]] = defaultdict(lambda: defaultdict(set))
    for family in metrics.HTTP_REQUESTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value > 0:
                labels = sample.labels
                operation = (labels["method"], labels["route"])
                answered[labels["service"]][operation].add(int(labels["status"]))
    return answered


def undocumented_answers() -> list[str]:
    """Every status a BOIG service answered that its OpenAPI does not document for that
    operation. Answers outside the contract's operations (unknown routes, wrong methods,
    /metrics, /docs) and the stand-in apps of other names are not the contract's."""
    problems = []
    answered = answered_statuses()
    for service in SERVICES:
        if service not in answered:
            continue
        documented = documented_statuses(service_openapi(service))
        for operation, statuses in sorted(answered[service].items()):
            allowed = documented.get(operation)
            if allowed is None:
                continue
            extra = statuses - allowed - NOBODY_READS
            if extra:
                method, path = operation
                problems.append(
                    f"{service} {method} {path} answered {sorted(extra)}; "
                    f"its OpenAPI documents {sorted(allowed)}"
                )
    return problems
