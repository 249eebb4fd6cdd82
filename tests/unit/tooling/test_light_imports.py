"""Serving entry points and every settings module import without the heavy runtimes: the
gateway and the scorer start light, and a model library loads only in the backend that runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "ultralytics", "scipy")
LIGHT_MODULES = (
    "services.common.settings",
    "services.gateway.settings",
    "services.describer.settings",
    "services.featurizer.settings",
    "services.scorer.settings",
    "services.generator.settings",
    "services.trainer.settings",
    "services.gateway.app",
    "services.scorer.app",
    "services.featurizer.app",
    "services.describer.app",
    "services.generator.worker",
)
"""Imported in this order in one fresh interpreter: a heavy module is blamed on the first
module after whose import it is loaded."""

_PROBE = """
import importlib, json, sys
modules, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
first_importer = {}
for module in modules:
    importlib.import_module(module)
    for name in heavy:
        if name in sys.modules:
            first_importer.setdefault(name, module)
print(json.dumps(first_importer))
"""


def heavy_imports(modules: tuple[str, ...], heavy: tuple[str, ...]) -> dict[str, str]:
    """Heavy module -> the first of ``modules`` whose import loaded it, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(modules), json.dumps(heavy)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_serving_entry_points_and_settings_import_no_heavy_runtime() -> None:
    assert heavy_imports(LIGHT_MODULES, HEAVY) == {}


def test_the_probe_blames_the_module_that_loads_a_library() -> None:
    found = heavy_imports(("json", "services.common.settings"), ("pydantic", "json"))
    assert found == {"json": "json", "pydantic": "services.common.settings"}
