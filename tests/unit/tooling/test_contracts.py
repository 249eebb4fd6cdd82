"""proto/ and .env.example are generated from the code and must match it."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli import ENV_EXAMPLE, PROTO
from services.tooling import contracts, env_example


def test_committed_contracts_match_the_code() -> None:
    assert contracts.check(PROTO) == []


def test_env_example_matches_the_settings() -> None:
    assert env_example.check(ENV_EXAMPLE) is None


def test_drift_is_reported_with_a_diff(tmp_path: Path) -> None:
    contracts.write(tmp_path)
    assert contracts.check(tmp_path) == []
    schema = tmp_path / "schemas" / "Verbalization.json"
    document = json.loads(schema.read_text())
    document["properties"].pop("tones")
    schema.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (tmp_path / "schemas" / "Removed.json").write_text("{}\n")
    problems = contracts.check(tmp_path)
    assert any("Verbalization.json" in p and "tones" in p for p in problems)
    assert any("stale schemas/Removed.json" in p for p in problems)


def test_every_service_documents_its_routes() -> None:
    gateway = json.loads((PROTO / "openapi" / "gateway.json").read_text())
    assert {"/v1/score", "/v1/describe", "/health"} <= set(gateway["paths"])
    for service, route in (
        ("scorer", "/score"),
        ("featurizer", "/featurize"),
        ("describer", "/describe"),
    ):
        assert route in json.loads((PROTO / "openapi" / f"{service}.json").read_text())["paths"]
