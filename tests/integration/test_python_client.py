"""boig-client and the `boig` API commands against the real gateway app, served by uvicorn on
loopback (stand-in scorer and describer behind it): what a marketing app sees, typed.

Jobs are finished here as a worker would (claim, progress in the result backend, images in
the artifact store); tests/e2e/test_python_client_venv.py runs the client against the real
services from a virtual environment of its own.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import boig_client.client as client_module
import httpx
import pytest
import uvicorn
from boig_client import (
    AsyncBoigClient,
    BoigClient,
    InvalidImage,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from boig_client.contracts import JobState, ScoreResponse
from fastapi import Depends, FastAPI
from rich.console import Console
from typer.testing import CliRunner

from services import client_cli
from services.cli import app as boig
from services.common import wire
from services.common.app import create_service_app
from services.common.clients import DescriberClient, ScorerClient
from services.common.contracts import (
    CheckpointInfo,
    ColorSwatch,
    CreativeScore,
    DescribeRequest,
    DescribeResponse,
    Edit,
    EditPart,
    ModelInfo,
    ScoreRequest,
    TargetDescription,
    Verbalization,
)
from services.common.contracts import ScoreResponse as WireScoreResponse
from services.common.db import Database
from services.common.jobs import JobStore
from services.common.queue import PROGRESS_STATE, QueueSettings, create_celery_app
from services.common.retraining import NewDecision, RetrainLedger
from services.common.storage import LocalArtifactStore
from services.demo.__main__ import SAMPLES
from services.gateway.app import create_app
from services.gateway.auth import KeyStore
from services.gateway.settings import GatewaySettings
from services.tooling.stack import free_port
from tests.job_records import images, outcome

CONTEXT = {"account": "sunbrew", "text": "iced coffee", "posted_at": "2026-06-12T09:00:00Z"}
SAMPLE_FILES = sorted(SAMPLES.glob("*.png"))[:3]
BRIEF = "colors: teal (0,128,128) 60%\ntones: cool"
GREY = ColorSwatch(name="grey", rgb=(128, 128, 128), coverage=0.6)
TEAL = ColorSwatch(name="teal", rgb=(0, 128, 128), coverage=0.6)


def scorer_app() -> FastAPI:
    """Ranks creatives in the order sent, each with one recolor edit when edits are asked."""
    app = create_service_app(service="fake-scorer", version="0", max_body_bytes=1 << 26)

    @app.post("/score")
    async def score(
        request: Annotated[ScoreRequest, Depends(wire.body_reader(ScoreRequest))],
    ) -> WireScoreResponse:
        edit = Edit(
            kind="recolor",
            summary="background grey → teal (covers 60%)",
            before=EditPart(color=GREY),
            after=EditPart(color=TEAL),
            reward=0.9,
            gain=0.4,
        )
        results = [
            CreativeScore(
                id=creative.id,
                rank=rank,
                total=0.5 / rank,
                breakdown={"colors": 0.5 / rank},
                verbalization=Verbalization(colors=[GREY]),
                edits=[edit][: request.max_edits],
            )
            for rank, creative in enumerate(request.creatives, start=1)
        ]
        target = TargetDescription(
            level=request.target.level, verbalization=Verbalization(colors=[TEAL]), text=BRIEF
        )
        return WireScoreResponse(
            reward=request.reward,
            weights={"colors": 1.0},
            targets=[target],
            results=results,
            models={"describer": ModelInfo(name="fake", version="1")},
        )

    return app


def describer_app() -> FastAPI:
    app = create_service_app(service="fake-describer", version="0", max_body_bytes=1 << 26)

    @app.post("/describe")
    async def describe(request: DescribeRequest) -> DescribeResponse:
        return DescribeResponse(
            verbalization=Verbalization(colors=[TEAL]),
            text=f"{BRIEF}\n# for {request.context.account}",
            repairs=[],
            model=ModelInfo(name="boigllm-fake", version="1"),
            prompt_version="p1",
            cached=False,
        )

    return app


@dataclass
class Gateway:
    url: str
    key: str
    jobs: JobStore
    artifacts: LocalArtifactStore
    ledger: RetrainLedger
    celery: Any

    def client(self) -> BoigClient:
        return BoigClient(self.url, self.key)

    def run_job(self, job_id: str, *, data: bytes = b"", delay: float = 0.0) -> threading.Thread:
        """Run ``job_id`` as a worker would, in a thread: claim it, report step 2 of 4, then
        after ``delay`` seconds finish it with one stored PNG."""
        lease = self.jobs.claim(job_id, worker="test-worker", lease_seconds=60)
        assert lease is not None
        progress = {"stage": "denoising", "step": 2, "total": 4, "eta_seconds": 1.5}
        self.celery.backend.store_result(job_id, progress, PROGRESS_STATE)

        def finish() -> None:
            time.sleep(delay)
            stored = self.artifacts.put(
                data or SAMPLE_FILES[0].read_bytes(), namespace="generated", suffix=".png"
            )
            image = dataclasses.replace(images(1)[0], artifact_key=stored.key, sha256=stored.sha256)
            assert self.jobs.complete(lease, outcome=outcome(), images=[image])

        thread = threading.Thread(target=finish)
        thread.start()
        return thread


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gateway")
    database = Database(f"sqlite:///{folder / 'gateway.db'}")
    celery = create_celery_app(
        QueueSettings(
            broker_url=f"sqla+sqlite:///{folder / 'broker.db'}",
            result_backend=f"db+sqlite:///{folder / 'results.db'}",
        ),
        name="test-python-client",
    )
    settings = GatewaySettings.model_validate(
        {
            "rate_limit": "1000/minute",
            "poll_rate_limit": "1000/minute",
            "database_url": database.url,
            "artifact_root": folder / "artifacts",
        }
    )
    app = create_app(
        settings,
        scorer=ScorerClient("http://scorer", transport=httpx.ASGITransport(app=scorer_app())),
        describer=DescriberClient(
            "http://describer", transport=httpx.ASGITransport(app=describer_app())
        ),
        database=database,
        celery=celery,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield Gateway(
            url=f"http://127.0.0.1:{port}",
            key=KeyStore(database).create("python-client").key,
            jobs=JobStore(database),
            artifacts=LocalArtifactStore(folder / "artifacts"),
            ledger=RetrainLedger(database),
            celery=celery,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        database.dispose()


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_pause", lambda seconds: None)


# --- the client ----------------------------------------------------------------------------


def test_files_are_scored_under_their_stems_with_edits(gateway: Gateway) -> None:
    with gateway.client() as boig:
        ranking = boig.score(CONTEXT, {"level": "high"}, SAMPLE_FILES, max_edits=2)
    assert isinstance(ranking, ScoreResponse)
    assert [result.id for result in ranking.results] == [path.stem for path in SAMPLE_FILES]
    assert ranking.results[0].edits[0].summary == "background grey → teal (covers 60%)"
    assert ranking.results[0].edits[0].after is not None
    assert ranking.targets[0].text == BRIEF


def test_a_mapping_names_the_creatives_and_bytes_are_checked_at_the_gateway(
    gateway: Gateway,
) -> None:
    with gateway.client() as boig:
        ranking = boig.score(
            CONTEXT,
            None,
            {"hero": SAMPLE_FILES[1].read_bytes(), "alt.v2": SAMPLE_FILES[2]},
            reward="contrastive",
        )
        assert [result.id for result in ranking.results] == ["hero", "alt.v2"]
        with pytest.raises(InvalidImage, match="broken") as raised:
            boig.score(CONTEXT, None, {"broken": b"not an image at all"})
    assert raised.value.request_id


def test_describe_returns_the_brief(gateway: Gateway) -> None:
    with gateway.client() as boig:
        brief = boig.describe({"account": "acme"}, {"name": "clicks", "level": "medium"})
    assert brief.text.endswith("# for acme") and brief.model.name == "boigllm-fake"


def test_errors_arrive_as_the_servers_types(gateway: Gateway) -> None:
    with (
        BoigClient(gateway.url, "boig_wrong_key") as stranger,
        pytest.raises(Unauthorized) as raised,
    ):
        stranger.checkpoints()
    assert raised.value.request_id
    with gateway.client() as boig:
        with pytest.raises(NotFound):
            boig.job("no-such-job")
        with pytest.raises(InvalidInput, match="cursor"):
            boig.feedback_page(cursor="not-a-cursor")


def test_a_job_is_generated_followed_to_its_end_and_its_image_read(gateway: Gateway) -> None:
    png = SAMPLE_FILES[1].read_bytes()
    console = Console(record=True, force_terminal=True, width=120)
    with gateway.client() as boig:
        accepted = boig.generate(CONTEXT, {"level": "high"}, count=1, seed=5, steps=4)
        assert accepted.state is JobState.QUEUED
        worker = gateway.run_job(accepted.job_id, data=png, delay=0.6)
        running = boig.job(accepted)
        assert running.state is JobState.RUNNING
        assert running.progress is not None and (running.progress.step, running.progress.total) == (
            2,
            4,
        )
        status = boig.wait(accepted, progress=console, poll_interval=0.1, timeout=30)
        worker.join()
        assert status.state is JobState.SUCCEEDED and status.request.seed == 5
        assert boig.image(status.images[0]) == png
    assert "succeeded, 1 images" in console.export_text()


def test_a_queued_job_is_canceled(gateway: Gateway) -> None:
    with gateway.client() as boig:
        accepted = boig.generate(CONTEXT)
        assert boig.cancel(accepted).state is JobState.CANCELED
        assert boig.wait(accepted, progress=False).state is JobState.CANCELED


def test_feedback_is_recorded_once_and_listed(gateway: Gateway) -> None:
    creative = SAMPLE_FILES[2]
    with gateway.client() as boig:
        first = boig.feedback("likes", 1250, image=creative, context=CONTEXT)
        again = boig.feedback("likes", 1250, image=creative.read_bytes(), context=CONTEXT)
        assert again.id == first.id and again.revision == 1
        corrected = boig.feedback("likes", 1300, image=creative, context=CONTEXT, correction=True)
        assert corrected.revision == 2 and corrected.kpi_value == 1300
        page = boig.feedback_page(account="sunbrew", kpi_name="likes")
        assert first.id in [record.id for record in page.items]
        assert boig.feedback_record(first.id).kpi_value == 1300
        assert first.context.posted_at == datetime(2026, 6, 12, 9, tzinfo=UTC)


def test_checkpoints_and_decisions_read_back_what_the_trainer_recorded(gateway: Gateway) -> None:
    gateway.ledger.record_versions(
        "boigllm",
        [
            CheckpointInfo(
                name="boigllm",
                version="20260601T000000Z-0000abcd",
                kind="boigllm-lora",
                created_at=datetime(2026, 6, 1, tzinfo=UTC),
                current=True,
                base_model="smollm2@1",
                dataset_version="v2",
                dataset_sha256="b" * 64,
                metrics={"eval_loss": 1.25},
            )
        ],
    )
    recorded = gateway.ledger.record(
        NewDecision(
            checkpoint="boigllm",
            action="reject",
            trigger="retrain",
            reason="not better beyond the 95% interval",
            previous_version="20260601T000000Z-0000abcd",
            current_version="20260601T000000Z-0000abcd",
            candidate_version="20260602T000000Z-0000beef",
        )
    ).decision
    with gateway.client() as boig:
        listed = boig.checkpoints()
        assert listed.current == "20260601T000000Z-0000abcd"
        assert listed.items[0].metrics == {"eval_loss": 1.25}
        page = boig.decisions(action="reject", limit=5)
        assert page.items[0].id == recorded.id
        assert boig.decision(recorded.id).reason == "not better beyond the 95% interval"


async def test_the_async_client_against_the_gateway(gateway: Gateway) -> None:
    async with AsyncBoigClient(gateway.url, gateway.key) as boig:
        ranking = await boig.score(CONTEXT, None, SAMPLE_FILES[:2], max_edits=1)
        assert [result.id for result in ranking.results] == [p.stem for p in SAMPLE_FILES[:2]]
        accepted = await boig.generate(CONTEXT, count=1)
        worker = gateway.run_job(accepted.job_id, delay=0.3)
        status = await boig.wait(accepted, progress=False, poll_interval=0.1, timeout=30)
        worker.join()
        assert status.state is JobState.SUCCEEDED
        assert (await boig.image(status.images[0].id)).startswith(b"\x89PNG")
        with pytest.raises(NotFound):
            await boig.feedback_record("nope")


# --- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # Wide enough that no table column is cut.
    monkeypatch.setattr(client_cli, "console", Console(width=200, highlight=False))
    monkeypatch.setenv("BOIG_URL", gateway.url)
    monkeypatch.setenv("BOIG_API_KEY", gateway.key)
    return CliRunner()


def test_boig_score_prints_the_ranking_with_edits(cli: CliRunner) -> None:
    files = [str(path) for path in SAMPLE_FILES]
    request = str(SAMPLES / "request.json")
    result = cli.invoke(boig, ["score", *files, "--request", request, "--edits", "2"])
    assert result.exit_code == 0, result.output
    assert "ranking (match reward)" in result.output and "colors ×1" in result.output
    for path in SAMPLE_FILES:
        assert path.stem in result.output
    assert "background grey → teal (covers 60%) (+0.400)" in result.output
    assert "target description (high)" in result.output and "tones: cool" in result.output

    as_json = cli.invoke(boig, ["score", files[0], "--account", "acme", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["results"][0]["id"] == SAMPLE_FILES[0].stem


def test_boig_generate_then_jobs_wait_writes_the_images(
    cli: CliRunner, gateway: Gateway, tmp_path: Path
) -> None:
    started = cli.invoke(boig, ["generate", "--request", str(SAMPLES / "request.json")])
    assert started.exit_code == 0, started.output
    job_id = started.stdout.split()[1]
    assert f"boig jobs wait {job_id}" in started.output
    gateway.run_job(job_id).join()
    shown = cli.invoke(boig, ["jobs", "show", job_id])
    assert f"job {job_id} succeeded" in shown.stdout
    waited = cli.invoke(boig, ["jobs", "wait", job_id, "--out", str(tmp_path)])
    assert waited.exit_code == 0, waited.output
    (written,) = tmp_path.glob("*.png")
    assert written.read_bytes() == SAMPLE_FILES[0].read_bytes()
    assert str(written) in waited.stdout


def test_boig_feedback_send_and_list(cli: CliRunner) -> None:
    sent = cli.invoke(
        boig,
        [
            "feedback",
            "send",
            "--image",
            str(SAMPLE_FILES[0]),
            "--account",
            "northgatebank",
            "--posted-at",
            "2026-05-01T12:00:00Z",
            "--kpi",
            "clicks",
            "--value",
            "42",
        ],
    )
    assert sent.exit_code == 0, sent.output
    assert "northgatebank  clicks = 42" in sent.stdout and "revision 1" in sent.stdout
    listed = cli.invoke(boig, ["feedback", "list", "--account", "northgatebank"])
    assert listed.exit_code == 0, listed.output
    assert "clicks" in listed.stdout and "2026-05-01 12:00" in listed.stdout


def test_boig_describe_prints_the_brief(cli: CliRunner) -> None:
    result = cli.invoke(boig, ["describe", "--account", "pippoptoys", "--level", "low"])
    assert result.exit_code == 0, result.output
    assert "# for pippoptoys" in result.stdout


def test_expected_errors_are_one_line_with_a_hint_never_a_traceback(
    cli: CliRunner, gateway: Gateway, no_waits: None
) -> None:
    wrong_key = cli.invoke(boig, ["jobs", "show", "x", "--key", "boig_wrong"])
    assert wrong_key.exit_code == 1
    assert "(unauthorized, request " in wrong_key.stderr and "BOIG_API_KEY" in wrong_key.stderr
    missing = cli.invoke(boig, ["jobs", "show", "nope"])
    assert missing.exit_code == 1 and "(not_found" in missing.stderr
    bad_input = cli.invoke(boig, ["describe", "--account", "not a handle"])
    assert bad_input.exit_code == 1 and "(invalid_input)" in bad_input.stderr
    nobody = f"http://127.0.0.1:{free_port()}"
    down = cli.invoke(boig, ["describe", "--account", "acme", "--url", nobody])
    assert down.exit_code == 1 and f"is the gateway running at {nobody}?" in down.stderr
    for result in (wrong_key, missing, bad_input, down):
        assert "Traceback" not in result.output


def test_usage_errors_say_what_to_give(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    no_context = cli.invoke(boig, ["describe"])
    assert no_context.exit_code == 2 and "--account" in no_context.output
    monkeypatch.delenv("BOIG_API_KEY")
    no_key = cli.invoke(boig, ["describe", "--account", "acme"])
    assert no_key.exit_code == 2 and "boig gateway keys create" in no_key.stderr
    both = cli.invoke(boig, ["feedback", "send", "--kpi", "likes", "--value", "1"])
    assert both.exit_code == 2 and "--image-id or --image" in both.output
