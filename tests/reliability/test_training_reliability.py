"""The training worker against the real Redis: a run whose worker is SIGKILLed mid-run is
taken over by another worker, resumes from its last checkpoint, and publishes once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from services.common.checkpoints import BOIGSD_CHECKPOINT, current_checkpoint, list_versions
from services.common.db import Database
from services.common.queue import send_training_task
from services.trainer.ddpo.state import read_metrics
from services.trainer.runs import RunState, TrainingStore
from services.trainer.settings import TrainerSettings
from services.trainer.worker import create_trainer_celery
from tests.reliability.harness import REDIS_DB, redis_or_skip, wait_for

EPOCHS = 6


def write_dataset(folder: Path) -> None:
    (folder / "content").mkdir(parents=True)
    rows = [
        {"context": {"account": account, "text": f"post {i}"}}
        for account in ("acme", "globex")
        for i in range(3)
    ]
    (folder / "content" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "manifest.json").write_text('{"format": 1}\n')


def test_a_killed_training_worker_s_run_resumes_elsewhere_and_publishes_once(
    tmp_path: Path, upstream_url: str, tiny_sd_path: Path
) -> None:
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis_or_skip(redis_url)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    write_dataset(tmp_path / "dataset")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "BOIG_HOME": str(tmp_path / "home"),
        "BOIG_QUEUE_BROKER_URL": redis_url,
        "BOIG_QUEUE_RESULT_BACKEND": redis_url,
        "BOIG_TRAINER_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
        "BOIG_TRAINER_DESCRIBER_URL": upstream_url,
        "BOIG_TRAINER_SCORER_URL": upstream_url,
        "BOIG_TRAINER_MODEL_PATH": str(tiny_sd_path),
        "BOIG_TRAINER_DATASET_DIR": str(tmp_path / "dataset"),
        "BOIG_TRAINER_RUNS_ROOT": str(tmp_path / "runs"),
        "BOIG_TRAINER_REGISTRY": str(tmp_path / "registry"),
        "BOIG_TRAINER_LEASE_SECONDS": "2",
        "BOIG_TRAINER_SWEEP_INTERVAL_SECONDS": "0.5",
        "BOIG_TRAINER_UNPUBLISHED_GRACE_SECONDS": "2",
        "BOIG_TRAINER_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    settings = TrainerSettings(database_url=env["BOIG_TRAINER_DATABASE_URL"])
    database = Database(settings.database_url)
    database.create_schema()
    store = TrainingStore(database)
    run = store.submit("boigsd", {"preset": "tiny", "epochs": EPOCHS, "contexts": 4, "holdout": 2})
    os.environ["BOIG_QUEUE_BROKER_URL"] = redis_url  # for this process's producer
    try:
        send_training_task(create_trainer_celery(settings), run.id)
    finally:
        del os.environ["BOIG_QUEUE_BROKER_URL"]
    store.mark_published(run.id)

    workers: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.trainer", f"--hostname={name}@%h"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        workers.append(process)
        return process

    def epoch() -> int:
        progress = store.get(run.id).progress or {}
        return int(progress.get("epoch", 0))

    try:
        first = start("w1")
        wait_for(lambda: epoch() >= 2, 180, "two epochs on the first worker")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = epoch()
        assert killed_at < EPOCHS, "the run ended before the kill; make the epochs longer"
        start("w2")
        wait_for(
            lambda: store.get(run.id).state in {RunState.SUCCEEDED, RunState.FAILED},
            240,
            "the second worker to finish the run",
        )
    finally:
        for process in workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)

    done = store.get(run.id)
    logs = "".join((tmp_path / f"{n}.log").read_text(errors="replace") for n in ("w1", "w2"))
    assert done.state is RunState.SUCCEEDED, (done, logs[-4000:])
    assert done.attempts == 2 and done.worker is not None and done.worker.startswith("w2")
    history = read_metrics(tmp_path / "runs" / run.id)
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert "resuming" in logs  # from a checkpoint, not from scratch
    registry = tmp_path / "registry"
    versions = list_versions(registry, BOIGSD_CHECKPOINT)
    assert len(versions) == 1  # published once
    assert current_checkpoint(registry, BOIGSD_CHECKPOINT) == versions[0]
    assert done.result is not None and done.result["checkpoint"] == versions[0].version
