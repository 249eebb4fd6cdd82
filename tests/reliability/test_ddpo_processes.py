"""A BoigSD run on two processes (torch.distributed.run, gloo on the CPU): both sample and
train, the launching job reports every epoch the main process logs, a cancel stops both, and
the next attempt resumes from the checkpoint and publishes once."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from services.common.boigsd_lora import LORA_WEIGHTS_FILE
from services.common.checkpoints import BOIGSD_CHECKPOINT, list_versions
from services.trainer.ddpo.job import BoigsdJob, Services, run_boigsd_job
from services.trainer.ddpo.run import read_evaluation
from services.trainer.ddpo.state import checkpointed_epoch, read_metrics
from services.trainer.ddpo.train import EpochStats
from tests.reliability.test_training_reliability import write_dataset

EPOCHS = 6


class Canceled(Exception):
    pass


def test_two_processes_train_one_run_that_resumes_after_a_cancel_and_publishes_once(
    tmp_path: Path, upstream_url: str, tiny_sd_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_dataset(tmp_path / "dataset")
    job = BoigsdJob(preset="tiny", epochs=EPOCHS, contexts=4, holdout=2, processes=2)
    run_dir, registry = tmp_path / "run", tmp_path / "registry"

    def run(on_epoch: object) -> object:
        return run_boigsd_job(
            job,
            model=tiny_sd_path,
            dataset=tmp_path / "dataset",
            services=Services(upstream_url, upstream_url),
            run_dir=run_dir,
            registry=registry,
            on_epoch=on_epoch,  # type: ignore[arg-type]
            device="cpu",
        )

    first: list[EpochStats] = []

    def cancel_after_first(stats: EpochStats) -> None:
        first.append(stats)
        raise Canceled

    with pytest.raises(Canceled):
        run(cancel_after_first)
    assert [s.epoch for s in first] == [1]
    # Both processes drew their share: the tiny preset draws 4 images per process.
    assert first[0].images == 8

    # The launcher reads the log every 2 s, so the processes may have trained a few more
    # epochs before the cancel stopped them; the next attempt goes on from their last
    # checkpoint and reports exactly the epochs after it.
    stopped_at = checkpointed_epoch(run_dir)
    second: list[int] = []
    outcome = run(lambda stats: second.append(stats.epoch))
    assert second == list(range(stopped_at + 1, EPOCHS + 1))
    history = read_metrics(run_dir)
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert all(row["images"] == 8 for row in history)
    # Held-out evaluations written once each, by the main process, with every image judged.
    assert [row["epoch"] for row in read_evaluation(run_dir)] == [0, 5, 6]
    lora = load_file(str(run_dir / "lora" / LORA_WEIGHTS_FILE))
    assert any(float(t.abs().max()) > 0 for name, t in lora.items() if "lora_B" in name)
    assert outcome.checkpoint is not None  # type: ignore[attr-defined]
    assert len(list_versions(registry, BOIGSD_CHECKPOINT)) == 1
