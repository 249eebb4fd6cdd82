"""Generate proto/: the OpenAPI of each HTTP service and the JSON Schema of shared messages.

The files are committed; CI regenerates them and fails on any difference, so a change to
a wire model is always a visible change to the contract.
"""

from __future__ import annotations

import difflib
import importlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.common import checkpoints, contracts

SERVICES = ("gateway", "describer", "featurizer", "scorer")
SHARED_MESSAGES: tuple[type[BaseModel], ...] = (
    contracts.Verbalization,
    contracts.Context,
    contracts.KpiTarget,
    contracts.FeaturizeRequest,
    contracts.FeaturizeResponse,
    contracts.DescribeRequest,
    contracts.DescribeResponse,
    contracts.LikelihoodRequest,
    contracts.LikelihoodResponse,
    contracts.ScoreRequest,
    contracts.ScoreResponse,
    contracts.GenerateRequest,
    contracts.JobAccepted,
    contracts.JobStatus,
    contracts.FeedbackRequest,
    contracts.FeedbackRecord,
    contracts.FeedbackPage,
    contracts.CheckpointList,
    contracts.RetrainDecision,
    contracts.RetrainDecisionPage,
    checkpoints.CheckpointManifest,
    contracts.Error,
)


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def service_openapi(service: str) -> dict[str, Any]:
    """The OpenAPI of ``service`` (one of SERVICES) as its code defines it, default settings."""
    module = importlib.import_module(f"services.{service}.app")
    document: dict[str, Any] = module.create_app().openapi()
    return document


def generate() -> dict[str, str]:
    """Every file of proto/, by relative path, as the code defines it now."""
    files: dict[str, str] = {}
    for service in SERVICES:
        files[f"openapi/{service}.json"] = _dump(service_openapi(service))
    for model in SHARED_MESSAGES:
        files[f"schemas/{model.__name__}.json"] = _dump(model.model_json_schema())
    return files


def write(root: Path) -> list[str]:
    written = []
    for relative, text in generate().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(relative)
    return written


def check(root: Path) -> list[str]:
    """Human-readable differences between proto/ and the code; empty when in sync."""
    problems = []
    expected = generate()
    for relative, text in expected.items():
        path = root / relative
        if not path.exists():
            problems.append(f"missing {relative}")
            continue
        actual = path.read_text()
        if actual != text:
            diff = difflib.unified_diff(
                actual.splitlines(),
                text.splitlines(),
                f"committed/{relative}",
                f"code/{relative}",
                lineterm="",
                n=1,
            )
            problems.append("\n".join(list(diff)[:40]))
    for path in sorted(root.rglob("*.json")):
        relative = path.relative_to(root).as_posix()
        if relative not in expected:
            problems.append(f"stale {relative}: no longer generated")
    return problems
