"""boig-client stays light: the wire contracts and errors it ships are the services' own modules,
and they, like every module of the client, import only the standard library and the client's
three dependencies, so that `pip install boig-client` never brings torch in."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import boig_client

import services

REPO = Path(services.__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "python" / "src" / "boig_client"
SHARED = {"contracts.py": "services/common/contracts.py", "errors.py": "services/common/errors.py"}
CLIENT_DEPENDENCIES = {"httpx", "pydantic", "rich", "boig_client"}


def top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names - {"__future__"}


def test_the_client_ships_the_services_contracts_and_errors_not_copies() -> None:
    for name, source in SHARED.items():
        assert (CLIENT / name).resolve() == (REPO / source).resolve(), name


def test_the_shared_modules_import_only_the_standard_library_and_pydantic() -> None:
    for source in SHARED.values():
        outside = top_level_imports(REPO / source) - set(sys.stdlib_module_names) - {"pydantic"}
        assert outside == set(), source


def test_every_client_module_imports_only_the_clients_dependencies() -> None:
    modules = sorted(CLIENT.glob("*.py"))
    assert len(modules) >= 6
    for module in modules:
        outside = top_level_imports(module) - set(sys.stdlib_module_names) - CLIENT_DEPENDENCIES
        assert outside == set(), module.name


def test_the_check_sees_an_import_outside(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import torch.nn\nfrom services.common import db\nimport json\n")
    assert top_level_imports(module) == {"torch", "services", "json"}


_PROBE = """
import json, sys
from boig_client import BoigClient, calls
calls.score({"account": "acme"}, None, [b"png"], max_edits=2)
heavy = ("torch", "numpy", "fastapi", "starlette", "sqlalchemy", "PIL", "services", "typer")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def test_using_the_client_loads_no_service_or_heavy_library() -> None:
    source = str(Path(boig_client.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": source},
        cwd=source,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
