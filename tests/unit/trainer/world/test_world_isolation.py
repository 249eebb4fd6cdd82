"""The world's ground truth stays hidden: only world generation and evaluation reach it.

The hidden part is the KPI function (``ground_truth``) and the brands' tastes it scores with
(``tastes``). A training-side module must not import them, neither directly nor through any
chain of imports (``world.generate`` imports both, so importing the generator is reaching them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

import services

HIDDEN = ("services.trainer.world.ground_truth", "services.trainer.world.tastes")
ALLOWED = (("trainer", "world"), ("trainer", "evaluate"))
"""Packages (under ``services/``) whose modules may import the hidden modules directly."""
WORLD_GENERATION = ("services.trainer.world.generate", "services.trainer.world.__main__")
"""The world's generator and its CLI: they draw KPIs, so they need the hidden modules. The rest
of the world package (brands, render) is public and checked like training code."""
EVALUATION = "services.trainer.evaluate"
GENERATION_DRIVERS = {
    "services.tooling.llm_recipe": "generates the training world and the held-out account's",
    "services.tooling.world_sd_recipe": "generates its world through llm_recipe.ensure_world",
    "services.tooling.boigsd_recipe": "generates its world through llm_recipe.ensure_world",
    "services.tooling.boigsd_eval_recipe": "`make eval-sd` judges images with the ground truth",
    "services.tooling.models": "`make models` runs both recipes",
    "services.cli": "the operator CLI: `boig llm train` and `boig world-sd` run the recipes",
    "services.__main__": "runs services.cli",
    "services.demo.world_sample": "generates the demo's world sample",
    "services.demo.brand_looks": "generates the demo's new-account world",
    "services.demo.__main__": "runs world_sample and brand_looks",
}
"""Entry points that call ``generate_world`` in their own process (module -> why). They are
orchestration, not training code: they write a world to disk and hand the files to ingestion
and training, which are checked (the recipe's fine-tuning runs in the same process, but no
training module can reach the hidden ones). Each must still reach the ground truth (else it has
no reason to be listed), and a module that imports one of them is not exempt. Running the
generator as a subprocess (``python -m services.trainer.world``) would let this table go."""
HIDDEN_TYPES = ("Taste", "TonePreference")
"""The hidden tastes' types: only hidden modules define or build them."""
SERVICES_ROOT = Path(services.__file__).resolve().parent


def _package_of(path: Path) -> str:
    """Dotted package a module file belongs to (what its relative imports start from)."""
    return ".".join(path.relative_to(SERVICES_ROOT.parent).with_suffix("").parts[:-1])


def _module_of(path: Path) -> str:
    """Dotted name of a module file (a package's ``__init__.py`` is the package)."""
    parts = path.relative_to(SERVICES_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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


def _imports_hidden(names: Iterable[str]) -> bool:
    return any(
        name == hidden or name.startswith(hidden + ".") for name in names for hidden in HIDDEN
    )


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Each module -> the modules among ``files`` that importing it runs directly.

    Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and then ``c``, so a module's edges
    are its parent packages and every prefix of each name it imports that is one of ``files``.
    Imports inside functions count too: they run when the function does.
    """
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        source = path.read_text(encoding="utf-8")
        for imported in (name, *imported_modules(source, package)):
            parts = imported.split(".")
            edges.update(
                prefix
                for prefix in (".".join(parts[:end]) for end in range(1, len(parts) + 1))
                if prefix in files
            )
        edges.discard(name)
        graph[name] = edges
    return graph


def chain_to_hidden(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import chain from ``start`` to a hidden module, or None if it reaches none."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        if current in HIDDEN:
            chain = [current]
            while (previous := came_from[chain[-1]]) is not None:
                chain.append(previous)
            return chain[::-1]
        for imported in sorted(graph[current]):
            if imported not in came_from:
                came_from[imported] = current
                queue.append(imported)
    return None


@cache
def _services_modules() -> dict[str, Path]:
    return {_module_of(path): path for path in sorted(SERVICES_ROOT.rglob("*.py"))}


@cache
def _services_graph() -> dict[str, set[str]]:
    return import_graph(_services_modules())


def _is_training_side(module: str) -> bool:
    exempt = (*HIDDEN, *WORLD_GENERATION, *GENERATION_DRIVERS)
    return module not in exempt and not (
        module == EVALUATION or module.startswith(EVALUATION + ".")
    )


def test_every_exemption_names_a_real_module() -> None:
    # A rename must not silently widen an exemption into a name nothing has.
    packages = [".".join(("services", *prefix)) for prefix in ALLOWED] + [EVALUATION]
    named = [*HIDDEN, *WORLD_GENERATION, *GENERATION_DRIVERS, *packages]
    missing = [name for name in named if name not in _services_modules()]
    assert missing == [], f"exempted modules or packages that do not exist: {missing}"


def test_only_world_and_evaluation_import_the_hidden_modules() -> None:
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


def test_no_training_side_module_reaches_the_hidden_modules_through_its_imports() -> None:
    graph = _services_graph()
    training_side = [module for module in graph if _is_training_side(module)]
    offenders = {
        module: " -> ".join(chain)
        for module in training_side
        if (chain := chain_to_hidden(graph, module)) is not None
    }
    assert len(training_side) > 80, "the scan found too few modules: is SERVICES_ROOT right?"
    assert offenders == {}, "training-side modules reach the ground truth:\n" + "\n".join(
        offenders.values()
    )


def test_every_generation_driver_still_needs_its_exemption() -> None:
    graph = _services_graph()
    unneeded = [module for module in GENERATION_DRIVERS if chain_to_hidden(graph, module) is None]
    assert unneeded == [], f"no longer reach the ground truth, drop their exemption: {unneeded}"


def test_only_hidden_modules_define_or_build_a_taste() -> None:
    """The tastes' values live in hidden modules, so public brand facts come without them."""
    offenders = []
    for module, path in _services_modules().items():
        if module in HIDDEN:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                name = node.name
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            else:
                continue
            if name in HIDDEN_TYPES:
                offenders.append(f"{module}:{node.lineno} {name}")
    assert offenders == [], f"hidden tastes defined or built outside {HIDDEN}: {offenders}"


@pytest.mark.parametrize(
    "module",
    [
        "services.trainer.world.brands",
        "services.trainer.world.render",
        "services.trainer.ingest.rows",
        "services.trainer.world.generate",
        "services.trainer.world.ground_truth",
    ],
)
def test_the_static_graph_agrees_with_a_fresh_interpreter(module: str) -> None:
    # The graph is a model of what Python runs; check it on modules on both sides of the line.
    script = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(sorted(set({HIDDEN!r}) & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = bool(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert loaded == (chain_to_hidden(_services_graph(), module) is not None)


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
        ("from services.trainer.world.tastes import taste_of", "services.scorer"),
    ],
)
def test_the_scan_catches_every_spelling(source: str, package: str) -> None:
    # The isolation test is only worth something if each way of importing is caught.
    assert _imports_hidden(imported_modules(source, package))


def test_the_scan_lets_the_public_world_modules_through() -> None:
    source = "from services.trainer.world.brands import DEFAULT_BRANDS\nimport numpy"
    assert not _imports_hidden(imported_modules(source, "services.trainer"))


def _fake_tree(root: Path, modules: dict[str, str]) -> dict[str, Path]:
    """Write ``modules`` (name -> source) as files under ``root``: packages where they have
    submodules, plain modules otherwise."""
    files: dict[str, Path] = {}
    for name, source in modules.items():
        path = root.joinpath(*name.split("."))
        if any(other.startswith(name + ".") for other in modules):
            path = path / "__init__.py"
        else:
            path = path.with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        files[name] = path
    return files


def test_the_graph_follows_chains_lazy_imports_and_package_inits(tmp_path: Path) -> None:
    files = _fake_tree(
        tmp_path,
        {
            "services": "",
            "services.trainer": "",
            "services.trainer.world": "",
            "services.trainer.world.ground_truth": "",
            "services.trainer.world.generate": "from . import ground_truth",
            "services.trainer.world.brands": "",
            # A clean module in a package whose __init__ reaches the hidden module.
            "services.leaky": "from services.trainer.world.generate import generate_world",
            "services.leaky.child": "",
            "services.lazy": "def run():\n    import services.leaky.child",
            "services.clean": "from services.trainer.world.brands import COFFEE",
        },
    )
    graph = import_graph(files)
    assert chain_to_hidden(graph, "services.lazy") == [
        "services.lazy",
        "services.leaky",
        "services.trainer.world.generate",
        "services.trainer.world.ground_truth",
    ]
    assert chain_to_hidden(graph, "services.leaky.child") is not None
    assert chain_to_hidden(graph, "services.clean") is None
