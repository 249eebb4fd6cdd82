"""boig-client as a marketing app gets it: `pip install clients/python` into a fresh virtual
environment (no torch, no services), then a script of its own against the real services
running as processes on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import services
from services.demo.__main__ import SAMPLES, create_api_key
from services.tooling.models import prepare_all
from services.tooling.stack import LocalStack, local_stack

pytestmark = pytest.mark.e2e

REPO = Path(services.__file__).resolve().parent.parent
NOT_INSTALLED = ("torch", "numpy", "fastapi", "sqlalchemy", "services")

APP = r"""
import json, sys
from pathlib import Path

from boig_client import BoigClient, NotFound, ScoreResponse

url, key, samples = sys.argv[1], sys.argv[2], Path(sys.argv[3])
request = json.loads((samples / "request.json").read_text())
files = sorted(samples.glob("*.*g"))
with BoigClient(url, key, timeout=600) as boig:
    ranking = boig.score(request["context"], request["target"], files, max_edits=2)
    assert isinstance(ranking, ScoreResponse)
    sent = boig.feedback("likes", 321, image=files[0], context=request["context"])
    again = boig.feedback("likes", 321, image=files[0].read_bytes(), context=request["context"])
    listed = boig.checkpoints()
    try:
        boig.job("no-such-job")
        missing = "found"
    except NotFound as exc:
        missing = exc.type
print(json.dumps({
    "ids": [result.id for result in ranking.results],
    "totals": [result.total for result in ranking.results],
    "target": ranking.targets[0].level.value,
    "feedback": [sent.id, again.id, sent.revision, sent.kpi_value],
    "checkpoints": listed.name,
    "missing": missing,
}))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    prepare_all(world_sd=False, boigllm=False, log=False)
    # What /v1/score, /v1/feedback and /v1/checkpoints need; no generator.
    topology = ("featurizer", "describer", "scorer", "gateway")
    # The first description on 2 shared cores can take minutes: time out on a broken stack,
    # not a slow one (the gateway waits longer than the scorer, as in production).
    slow = {
        "BOIG_SCORER_UPSTREAM_TIMEOUT_SECONDS": "480",
        "BOIG_GATEWAY_UPSTREAM_TIMEOUT_SECONDS": "540",
    }
    folder = tmp_path_factory.mktemp("stack")
    with local_stack(folder, services=topology, extra_env=slow) as running:
        yield running


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with boig-client installed, and nothing else of ours."""
    venv = tmp_path_factory.mktemp("client") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(REPO / "clients" / "python")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def test_the_client_installs_without_torch_or_the_services(
    client_python: Path, tmp_path: Path
) -> None:
    probe = (
        "import importlib.util, json\n"
        f"print(json.dumps([m for m in {NOT_INSTALLED!r} if importlib.util.find_spec(m)]))"
    )
    found = subprocess.run(
        [client_python, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert json.loads(found.stdout) == []
    # The contracts inside are the services' own, not a link left dangling by the install.
    shipped = subprocess.run(
        [client_python, "-c", "import boig_client.contracts as c; print(c.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    installed = Path(shipped.stdout.strip())
    assert not installed.is_symlink()
    assert installed.read_text() == (REPO / "services" / "common" / "contracts.py").read_text()


def test_a_marketing_app_scores_reports_and_reads_checkpoints(
    client_python: Path, stack: LocalStack, tmp_path: Path
) -> None:
    key = create_api_key(stack.database_url)
    app = tmp_path / "app.py"
    app.write_text(APP)
    result = subprocess.run(
        [client_python, str(app), stack.url("gateway"), key, str(SAMPLES)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    creatives = sorted(SAMPLES.glob("*.*g"))
    assert sorted(report["ids"]) == sorted(path.stem for path in creatives)
    assert report["totals"] == sorted(report["totals"], reverse=True)
    assert report["target"] == "high"
    sent_id, again_id, revision, value = report["feedback"]
    assert sent_id == again_id and revision == 1 and value == 321
    assert report["checkpoints"] == "boigllm"
    assert report["missing"] == "not_found"


def test_boig_score_ranks_the_samples_through_the_stack(stack: LocalStack) -> None:
    key = create_api_key(stack.database_url)
    creatives = sorted(SAMPLES.glob("*.*g"))
    options = ["--request", str(SAMPLES / "request.json"), "--edits", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "score", *map(str, creatives), *options],
        capture_output=True,
        text=True,
        timeout=900,
        env={
            **os.environ,
            "BOIG_URL": stack.url("gateway"),
            "BOIG_API_KEY": key,
            "COLUMNS": "200",
        },
    )
    print(result.stdout)  # shown by `pytest -rP`: the table a person reads
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ranking (match reward)" in result.stdout
    assert "target description (high)" in result.stdout
    for path in creatives:
        assert path.stem in result.stdout
