"""One process of a multi-process BoigSD run, started by the run's job under
``torch.distributed.run``::

    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m services.trainer.ddpo.launch --run-dir DIR --model MODEL --scorer-url URL

The job that launches it has written the run folder's ``job.json`` and pinned its tasks, and
publishes once every process has exited: a process here trains, and only the main one
writes the run folder. Each takes the GPU of its local rank (or the CPU).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from services.common.torch_device import resolve_device
from services.trainer.ddpo.job import config_for, load_pipeline, make_reward, read_job
from services.trainer.ddpo.run import DdpoRun, train_boigsd
from services.trainer.ddpo.train import make_accelerator


def train_process(run_dir: Path, model: Path, scorer_url: str, device: str = "auto") -> DdpoRun:
    job = read_job(run_dir)
    if job is None:
        raise SystemExit(f"{run_dir} holds no job.json: launch runs through the run's job")
    config = config_for(job, model)
    accelerator = make_accelerator(config, resolve_device(device))
    pipe = load_pipeline(model, accelerator.device, mixed_precision=config.mixed_precision)
    reward = make_reward(job, scorer_url)
    try:
        # No tasks given: every process reads the ones the job pinned in the run folder.
        return train_boigsd(
            pipe,
            config,
            [],
            reward,
            run_dir,
            base_model=model.name,
            accelerator=accelerator,
        )
    finally:
        reward.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--scorer-url", required=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train_process(args.run_dir, args.model, args.scorer_url, args.device)


if __name__ == "__main__":
    main()
