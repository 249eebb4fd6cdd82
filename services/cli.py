"""`boig`: the operator's command line (models, contracts, API keys, BoigLLM recipes)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from services.gateway.cli import app as gateway_app

if TYPE_CHECKING:
    from services.trainer.runs import TrainingRun, TrainingStore

app = typer.Typer(help="BOIG operator commands.", no_args_is_help=True)
models_app = typer.Typer(help="Local default models.", no_args_is_help=True)
contracts_app = typer.Typer(help="Wire contracts in proto/.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(contracts_app, name="contracts")
app.add_typer(gateway_app, name="gateway", help="Gateway administration: database, API keys.")
llm_app = typer.Typer(help="BoigLLM on the synthetic world.", no_args_is_help=True)
app.add_typer(llm_app, name="llm")
world_sd_app = typer.Typer(help="The world SD: Stable Diffusion trained on the synthetic world.")
app.add_typer(world_sd_app, name="world-sd")
sd_app = typer.Typer(help="BoigSD: the world SD aligned to BoigLLM's reward by DDPO.")
app.add_typer(sd_app, name="sd")
runs_app = typer.Typer(help="Training runs on the training worker's queue.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

Seed = Annotated[int, typer.Option(help="World seed.")]
PostsPerBrand = Annotated[int, typer.Option(min=20, help="World size: posts per brand.")]

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "proto"
ENV_EXAMPLE = REPO / ".env.example"


@models_app.command("prepare")
def prepare_models(
    world_sd: Annotated[
        bool,
        typer.Option(help="Also train the world SD the generator serves (~1 h on 2 cores, once)."),
    ] = True,
    boigllm: Annotated[
        bool,
        typer.Option(help="Also fine-tune BoigLLM on the synthetic world (~20 min, once)."),
    ] = True,
) -> None:
    """Prepare the embedded default models (cached; safe to run again)."""
    from services.tooling.models import prepare_all

    prepare_all(world_sd=world_sd, boigllm=boigllm)


@contracts_app.command("write")
def write_contracts(root: Path = PROTO) -> None:
    """Regenerate proto/ and .env.example from the code."""
    from services.tooling import env_example
    from services.tooling.contracts import write

    changed = write(root)
    if env_example.write(ENV_EXAMPLE):
        changed.append(ENV_EXAMPLE.name)
    typer.echo("\n".join(f"wrote {path}" for path in changed) or "proto/ already up to date")


@contracts_app.command("check")
def check_contracts(root: Path = PROTO) -> None:
    """Exit 1 when proto/ or .env.example differs from what the code generates."""
    from services.tooling import env_example
    from services.tooling.contracts import check

    problems = check(root)
    env_problem = env_example.check(ENV_EXAMPLE)
    if env_problem:
        problems.append(env_problem)
    if problems:
        typer.echo("\n\n".join(problems), err=True)
        typer.echo("out of date: run `make contracts` and commit the result", err=True)
        raise typer.Exit(1)
    typer.echo("proto/ matches the code")


@llm_app.command("train")
def train_llm(
    seed: Seed = 0,
    posts_per_brand: PostsPerBrand = 500,
    max_steps: Annotated[
        int | None, typer.Option(min=2, help="Override the preset's steps.")
    ] = None,
    preset: Annotated[
        Literal["cpu", "cpu-weights", "gpu", "tiny"],
        typer.Option(
            help="cpu (retrieval-augmented, ~15 min on 2 cores, the served default), "
            "cpu-weights (the weight-only recipe on CPU), gpu (8B-class base on CUDA), tiny."
        ),
    ] = "cpu",
) -> None:
    """World -> dataset -> SmolLM2 LoRA (cpu preset) -> published checkpoint; each stage is
    reused or resumed when its output exists."""
    from services.tooling import llm_recipe

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths = llm_recipe.default_paths(seed, posts_per_brand)
    llm_recipe.train(paths, llm_recipe.preset_config(paths, preset, max_steps))


@llm_app.command("export-merged")
def export_merged_llm(
    out: Annotated[Path, typer.Argument(help="New folder for the merged model.")],
    version: Annotated[
        str | None, typer.Option(help="Checkpoint version (default: the registry's current).")
    ] = None,
    dtype: Annotated[Literal["float32", "bfloat16"], typer.Option()] = "float32",
) -> None:
    """A published BoigLLM checkpoint as merged weights for vLLM; prints the
    --served-model-name to start the server with."""
    from services.common.checkpoints import (
        BOIGLLM_CHECKPOINT,
        current_checkpoint,
        list_versions,
        served_model_name,
    )
    from services.common.settings import boig_home, checkpoint_registry, default_smollm2_dir
    from services.trainer.finetune.export import export_merged

    registry = checkpoint_registry(boig_home())
    if version is None:
        checkpoint = current_checkpoint(registry, BOIGLLM_CHECKPOINT)
    else:
        found = [c for c in list_versions(registry, BOIGLLM_CHECKPOINT) if c.version == version]
        checkpoint = found[0] if found else None
    if checkpoint is None:
        typer.echo(f"no BoigLLM checkpoint {version or '(current)'} in {registry}", err=True)
        raise typer.Exit(1)
    export_merged(checkpoint, default_smollm2_dir(), out, dtype=dtype)
    typer.echo(f"{out}\n--served-model-name {served_model_name(checkpoint)}")


@llm_app.command("probe")
def probe_llm(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(help="A BoigLLM checkpoint folder (default: the registry's current)."),
    ] = None,
    seed: Seed = 0,
    posts_per_brand: PostsPerBrand = 500,
    rows: Annotated[int, typer.Option(min=3, help="Held-out rows of each direction.")] = 96,
) -> None:
    """Does the checkpoint condition on brand and level? First-colour distributions per
    (account, level) cell and level accuracy on held-out rows, next to the data and priors."""
    from services.tooling import llm_recipe

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    llm_recipe.probe_checkpoint(
        llm_recipe.default_paths(seed, posts_per_brand), checkpoint, rows=rows
    )


ABLATIONS = ("no-history", "sampled-colors")
"""llm_recipe.Ablation's names, here so that the CLI starts without importing torch."""


def _known_ablations(names: list[str] | None) -> list[str]:
    unknown = sorted(set(names or ()) - set(ABLATIONS))
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: choose from {', '.join(ABLATIONS)}")
    return names or []


@llm_app.command("evaluate")
def evaluate_llm(
    seed: Seed = 0,
    posts_per_brand: PostsPerBrand = 500,
    rows_per_level: Annotated[
        int, typer.Option(min=2, help="Held-out rows per KPI level (stratified sample).")
    ] = 20,
    base: Annotated[
        bool, typer.Option(help="Also evaluate the base model (the slowest part).")
    ] = True,
    ablation: Annotated[
        list[str] | None,
        typer.Option(
            callback=_known_ablations,
            help="Also evaluate a variant of BoigLLM (repeatable): 'no-history', without its "
            "history lines (~30 s a row on 2 cores: without them its descriptions often run "
            "to the token limit); 'sampled-colors', colours lines averaged over 4 sampled "
            "draws instead of the greedy line (descriptions only).",
        ),
    ] = None,
    holdout_account: Annotated[
        bool,
        typer.Option(help="Also evaluate on an account never trained on (its own history)."),
    ] = True,
    holdout_rows_per_level: Annotated[
        int, typer.Option(min=2, help="Held-out rows per level of the never-trained account.")
    ] = 10,
) -> None:
    """BoigLLM vs the baselines on the held-out split: table + HTML report."""
    from services.tooling import llm_recipe
    from services.trainer.evaluate.run import EvaluationSettings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths = llm_recipe.default_paths(seed, posts_per_brand)
    settings = EvaluationSettings(rows_per_level=rows_per_level)
    llm_recipe.run_evaluation(
        paths,
        settings,
        with_base=base,
        ablations=[llm_recipe.Ablation(name) for name in ablation or ()],
        holdout_account=holdout_account,
        holdout_rows_per_level=holdout_rows_per_level,
    )


@world_sd_app.command("train")
def train_world_sd(
    preset: Annotated[
        str,
        typer.Option(
            help="cpu (~30 min on 2 cores), cpu-long (cpu, then ~28 min more: the default), "
            "gpu or tiny."
        ),
    ] = "cpu-long",
    out: Annotated[
        Path | None,
        typer.Option(help="Install the trained pipeline here (default: the generator's)."),
    ] = None,
    base_model: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune this SD 1.5 diffusers folder on a GPU (the finetune preset) "
            "instead of training from scratch."
        ),
    ] = None,
    account: Annotated[str | None, typer.Option(help="Train on this account only.")] = None,
    level: Annotated[
        str | None,
        typer.Option(help="Train on creatives of this KPI level only (low/medium/high)."),
    ] = None,
) -> None:
    """World -> dataset -> captions -> world SD (resumes an interrupted run) -> model folder.

    `--base-model SD15 --level high --out DIR` is the 'SD fine-tuned on high-KPI images'
    baseline."""
    from services.tooling import world_sd_recipe
    from services.trainer.world_sd.config import CONTINUED_PRESETS, PRESETS, finetune_preset

    known = [*PRESETS, *CONTINUED_PRESETS]
    if preset not in known:
        raise typer.BadParameter(f"unknown preset {preset!r}; known: {', '.join(known)}")
    if level not in (None, "low", "medium", "high"):
        raise typer.BadParameter(f"level must be low, medium or high, got {level!r}")
    if base_model is not None and out is None:
        raise typer.BadParameter("a fine-tune needs --out (it must not replace the world SD)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = finetune_preset(base_model) if base_model is not None else None
    selection = world_sd_recipe.Selection(account=account, level=level)
    preset_name = "finetune" if base_model is not None else preset
    typer.echo(
        world_sd_recipe.prepare_world_sd(out, preset_name, config=config, selection=selection)
    )


@world_sd_app.command("evaluate")
def evaluate_world_sd(
    model: Annotated[
        Path | None, typer.Option(help="Pipeline folder (default: the generator's world SD).")
    ] = None,
    captions: Annotated[int, typer.Option(min=8, help="Held-out captions scored.")] = 160,
    samples: Annotated[int, typer.Option(min=2, help="Images per caption.")] = 2,
) -> None:
    """The world SD vs the random floor, the real creatives and the chance line on held-out
    captions: table + HTML report with image grids."""
    from services.tooling import world_sd_recipe
    from services.tooling.llm_recipe import default_paths

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    world_sd_recipe.run_evaluation(
        default_paths(), model=model, captions=captions, samples_per_caption=samples
    )


@sd_app.command("train")
def train_sd(
    preset: Annotated[str, typer.Option(help="DDPO preset: tiny, cpu or gpu.")] = "cpu",
    contexts: Annotated[
        int, typer.Option(min=1, help="Training contexts (prompts), evenly across brands.")
    ] = 32,
    holdout: Annotated[
        int,
        typer.Option(
            min=0, help="More training-split contexts, not trained on: the early-stopping set."
        ),
    ] = 16,
    reward: Annotated[
        str, typer.Option(help="The scorer's reward: match, likelihood or contrastive.")
    ] = "match",
    faithfulness: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Weight of the match reward mixed in as a faithfulness guard."
        ),
    ] = 0.0,
    kl_coef: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="Weight of the KL penalty to the base model (else the preset's)."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the preset's.")] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(help="UNet modules the LoRA adapts: attention or all (else the preset's)."),
    ] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Guidance scale; else what the model recommends.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Diffusers folder to align; default: the world SD.")
    ] = None,
    publish: Annotated[bool, typer.Option(help="Publish the LoRA to the registry.")] = True,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Training processes, one per GPU (torch.distributed.run); gradients are "
            "averaged across them.",
        ),
    ] = 1,
    seed: Seed = 0,
    enqueue: Annotated[
        bool,
        typer.Option(help="Queue the run for the training worker instead of running it here."),
    ] = False,
) -> None:
    """Train BoigSD in the foreground (resumes an interrupted run) and publish it, or queue it
    for the training worker (`python -m services.trainer`) with --enqueue."""
    from pydantic import ValidationError

    from services.tooling import boigsd_recipe
    from services.trainer.ddpo.job import BoigsdJob

    try:
        job = BoigsdJob(
            preset=preset,
            contexts=contexts,
            holdout=holdout,
            reward=reward,  # type: ignore[arg-type]
            faithfulness=faithfulness,
            kl_coef=kl_coef,
            epochs=epochs,
            lora_targets=lora_targets,
            guidance_scale=guidance,
            seed=seed,
            publish=publish,
            processes=processes,
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if enqueue:
        if model is not None:
            raise typer.BadParameter(
                "the training worker aligns its own BOIG_TRAINER_MODEL_PATH", param_hint="--model"
            )
        run_id = _enqueue("boigsd", job.model_dump(mode="json"))
        typer.echo(f"queued training run {run_id}; follow it with `boig runs show {run_id}`")
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per reward request
    boigsd_recipe.train(job, model=model)


@sd_app.command("evaluate")
def evaluate_sd(
    run: Annotated[
        Path | None,
        typer.Option(help="DDPO run folder (default: the one `make train-sd` trains)."),
    ] = None,
    posts: Annotated[int, typer.Option(min=8, help="Held-out future posts.")] = 64,
    samples: Annotated[int, typer.Option(min=2, help="Images per post and method.")] = 4,
    best_of: Annotated[int, typer.Option(min=2, help="N of the best-of-N baseline.")] = 4,
    sft: Annotated[bool, typer.Option(help="Train and evaluate the SFT baseline.")] = True,
) -> None:
    """BoigSD vs SFT, best-of-N, prompt-only and the base model on held-out future posts,
    judged on the synthetic world's hidden true KPI: table + HTML report with curves."""
    from services.tooling import boigsd_eval_recipe
    from services.tooling.llm_recipe import default_paths

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = boigsd_eval_recipe.EvalSdSettings(
        posts=posts, samples=samples, best_of=best_of, sft=sft
    )
    boigsd_eval_recipe.run_evaluation(default_paths(), settings, run_dir=run)


def _training_store() -> TrainingStore:
    from services.trainer.runs import TrainingStore
    from services.trainer.settings import TrainerSettings

    return TrainingStore.open(TrainerSettings().database_url)


def _enqueue(kind: str, params: dict[str, object]) -> str:
    """A run saved first, then its task sent (a lost send is re-sent by the worker's sweeper)."""
    from services.common.queue import send_training_task
    from services.trainer.settings import TrainerSettings
    from services.trainer.worker import create_trainer_celery

    store = _training_store()
    run = store.submit(kind, params)
    send_training_task(create_trainer_celery(TrainerSettings()), run.id)
    store.mark_published(run.id)
    return run.id


@runs_app.command("list")
def list_runs(limit: Annotated[int, typer.Option(min=1, max=1000)] = 20) -> None:
    """The newest training runs: state, progress, result."""
    store = _training_store()
    for run in store.recent(limit):
        typer.echo(_run_line(run))


@runs_app.command("show")
def show_run(run_id: str) -> None:
    """One run in full (JSON)."""
    import dataclasses
    import json

    store = _training_store()
    typer.echo(json.dumps(dataclasses.asdict(store.get(run_id)), indent=2, default=str))


@runs_app.command("cancel")
def cancel_run(run_id: str) -> None:
    """Cancel a run: a queued one at once, a running one after its current epoch."""
    store = _training_store()
    typer.echo(_run_line(store.cancel(run_id)))


def _run_line(run: TrainingRun) -> str:
    progress = run.progress or {}
    done = f"epoch {progress.get('epoch', 0)}/{progress.get('epochs', '?')}"
    reward = progress.get("reward_mean")
    extra = f", reward {reward:.4f}" if isinstance(reward, float) else ""
    eta = progress.get("eta_seconds")
    extra += f", ~{eta / 60:.0f} min left" if isinstance(eta, float) else ""
    error = f" ({run.error_type}: {run.error_message})" if run.error_type else ""
    return f"{run.id}  {run.kind}  {run.state.value}  {done}{extra}{error}"


@app.command("prune")
def prune(
    checkpoints_keep: Annotated[
        int,
        typer.Option(
            min=1, help="Newest versions kept per checkpoint (plus the current one if older)."
        ),
    ] = 5,
    datasets_keep: Annotated[
        int,
        typer.Option(min=1, help="Newest versions kept per dataset (plus `latest` if older)."),
    ] = 3,
) -> None:
    """Delete old checkpoint and dataset versions under BOIG_HOME, never those in use.

    Generation jobs and their images are deleted by the generator worker after
    BOIG_GENERATOR_JOB_RETENTION_DAYS.
    """
    from services.common.settings import boig_home
    from services.tooling.retention import prune_home

    report = prune_home(boig_home(), checkpoints_keep=checkpoints_keep, datasets_keep=datasets_keep)
    for kind, deleted in (("checkpoint", report.checkpoints), ("dataset", report.datasets)):
        for name, versions in deleted.items():
            typer.echo(f"{kind} {name}: deleted {len(versions)} versions ({', '.join(versions)})")
    if not report.checkpoints and not report.datasets:
        typer.echo("nothing to delete")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
