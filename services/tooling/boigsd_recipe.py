"""`make train-sd`: BoigSD by DDPO on the synthetic world, in the foreground.

The world and its dataset as the BoigLLM recipe makes them; a featurizer, a describer
(serving the registry's BoigLLM when there is one) and a scorer on loopback; then the same
run the training worker executes (``services.trainer.ddpo.job``), published as the registry's
``boigsd`` entry, which the generator's ``boigsd`` strategy serves.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from tqdm import tqdm

from services.common.model_folders import folder_version
from services.common.settings import default_world_sd_dir
from services.tooling import llm_recipe
from services.tooling.stack import local_stack
from services.trainer.ddpo.job import BoigsdJob, BoigsdOutcome, Services, run_boigsd_job
from services.trainer.ddpo.train import EpochStats

console = Console(stderr=True)


def run_dir(paths: llm_recipe.LlmPaths, job: BoigsdJob, model: Path) -> Path:
    """One folder per world, model weights and job (but its epochs): an interrupted run
    resumes, and one started again with more epochs continues."""
    guidance = "auto" if job.guidance_scale is None else f"g{job.guidance_scale:g}"
    reward = job.reward + (f"+match{job.faithfulness:g}" if job.faithfulness else "")
    reward += "" if job.kl_coef is None else f"-kl{job.kl_coef:g}"
    reward += "" if job.lora_targets is None else f"-lora{job.lora_targets}"
    # Each process draws its own stream: a run resumes with the processes it started with.
    reward += "" if job.processes == 1 else f"-x{job.processes}"
    name = "-".join(
        [
            f"boigsd-{paths.world.name}-{folder_version(model)[:8]}",
            f"{job.preset}-{reward}-{job.contexts}ctx-{job.holdout}held-{guidance}",
            f"seed{job.seed}",
        ]
    )
    return paths.home / "runs" / name


def describer_env(paths: llm_recipe.LlmPaths, dataset: Path) -> dict[str, str]:
    """The environment of a describer that writes BoigSD's prompts offline (training, eval-sd,
    probes): the registry's BoigLLM (the base model until one is published), reading the
    training split's history only, so prompts of the past never know the future."""
    return {
        "BOIG_DESCRIBER_HISTORY_PATH": str(llm_recipe.training_history(dataset)),
        "BOIG_DESCRIBER_CHECKPOINT_REGISTRY": str(paths.registry),
        # An offline batch: queueing behind its own requests is expected, not overload.
        "BOIG_DESCRIBER_MAX_QUEUE_WAIT_SECONDS": "3600",
    }


def train(job: BoigsdJob, *, model: Path | None = None) -> BoigsdOutcome:
    paths = llm_recipe.default_paths(job.seed)
    model = model or default_world_sd_dir()
    if not (model / "model_index.json").is_file():
        raise SystemExit(f"no diffusion pipeline at {model}: run `make models` first")
    posts = llm_recipe.ensure_world(paths)
    folder = run_dir(paths, job, model)
    dataset = llm_recipe.ensure_dataset(paths, posts, folder)
    env = describer_env(paths, dataset)
    with (
        local_stack(
            folder / "stack", services=("featurizer", "describer", "scorer"), extra_env=env
        ) as stack,
        tqdm(unit="epoch", desc="BoigSD DDPO") as bar,
    ):

        def progress(stats: EpochStats) -> None:
            bar.update(1)
            bar.set_postfix(
                reward=f"{stats.reward_mean:.4f}±{stats.reward_std:.3f}",
                kl=f"{stats.approx_kl:.1e}",
                clip=f"{stats.clip_fraction:.2f}",
            )

        outcome = run_boigsd_job(
            job,
            model=model,
            dataset=dataset,
            services=Services(stack.url("describer"), stack.url("scorer")),
            run_dir=folder,
            registry=paths.registry,
            on_epoch=progress,
        )
    if outcome.checkpoint is not None:
        console.print(f"boigsd: published {outcome.checkpoint.version} to {paths.registry}")
    return outcome
