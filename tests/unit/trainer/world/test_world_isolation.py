"""The hidden KPI function stays hidden: nothing outside the world and evaluation imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import services

HIDDEN = "services.trainer.world.ground_truth"
ALLOWED = (("trainer", "world"), ("trainer", "evaluation"))
SERVICES_ROOT = Path(services.__file__).resolve().parent


def _package_of(path: Path) -> str:
    """Dotted package a module file belongs to (what its relative imports start from)."""
    return ".".join(path.relative_to(SERVICES_ROOT.parent).with_suffix("").parts[:-1])


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of every module ``source`` imports, relative imports resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            # `from services.trainer.world import ground_truth` names the module as an alias.
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _imports_hidden(names: set[str]) -> bool:
    return any(name == HIDDEN or name.startswith(HIDDEN + ".") for name in names)


def test_only_world_and_evaluation_import_the_ground_truth() -> None:
    checked, offenders = 0, []
    for path in sorted(SERVICES_ROOT.rglob("*.py")):
        parts = path.relative_to(SERVICES_ROOT).parts
        if any(parts[: len(prefix)] == prefix for prefix in ALLOWED):
            continue
        checked += 1
        if _imports_hidden(imported_modules(path.read_text(encoding="utf-8"), _package_of(path))):
            offenders.append(str(path.relative_to(SERVICES_ROOT.parent)))
    assert checked > 20, "the scan found too few modules: is SERVICES_ROOT right?"
    assert offenders == [], f"training-side modules import the hidden KPI function: {offenders}"


@pytest.mark.parametrize(
    ("source", "package"),
    [
        ("import services.trainer.world.ground_truth", "services.scorer"),
        ("import services.trainer.world.ground_truth as gt", "services.scorer"),
        ("from services.trainer.world.ground_truth import expected_kpi", "services.scorer"),
        ("from services.trainer.world import ground_truth", "services.trainer"),
        ("from .world import ground_truth", "services.trainer"),
        ("from ..world.ground_truth import draw_kpi", "services.trainer.ingest"),
        ("import importlib\nimportlib.import_module('services.trainer.world.ground_truth')", "x"),
    ],
)
def test_the_scan_catches_every_spelling(source: str, package: str) -> None:
    # The isolation test is only worth something if each way of importing is caught.
    assert _imports_hidden(imported_modules(source, package))


def test_the_scan_lets_the_public_world_modules_through() -> None:
    source = "from services.trainer.world.generate import generate_world\nimport numpy"
    assert not _imports_hidden(imported_modules(source, "services.trainer"))
