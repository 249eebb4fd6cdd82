"""A service never imports a sibling service: shared code lives in services/common."""

from __future__ import annotations

import ast
from pathlib import Path

import services

SERVICES = ("describer", "featurizer", "scorer", "generator", "gateway", "trainer")
ROOT = Path(services.__file__).resolve().parent


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_service_imports_another() -> None:
    offenders = []
    for service in SERVICES:
        siblings = tuple(f"services.{other}" for other in SERVICES if other != service)
        for path in sorted((ROOT / service).rglob("*.py")):
            for name in imported(path):
                if name in siblings or name.startswith(tuple(s + "." for s in siblings)):
                    offenders.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert offenders == []


def test_the_check_sees_a_sibling_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from services.generator.pipeline import ImagePipeline\nimport os\n")
    assert "services.generator.pipeline" in imported(module)
