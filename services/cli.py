"""`boig`: the one command line: the public API (score, generate, feedback; client_cli) and
the operator's tools (models, contracts, API keys, BoigLLM recipes, checkpoints)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from services import client_cli
from services.gateway.cli import app as gateway_app

if TYPE_CHECKING:
    from services.common.retraining import StoredDecision
    from services.trainer.runs import TrainingRun, TrainingStore
    from services.trainer.settings import TrainerSettings

app = typer.Typer(
    help="BOIG: score, generate and report creatives through the API; operate the services.",
    no_args_is_help=True,
)
client_cli.register(app)
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
checkpoints_app = typer.Typer(
    help="Published checkpoints: list them, promote one, roll back (each move recorded).",
    no_args_is_help=True,
)
app.add_typer(checkpoints_app, name="checkpoints")

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


@app.command(
    "ingest",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def ingest(ctx: typer.Context) -> None:
    """Rows (.jsonl, .csv, .parquet) -> a BoigLLM dataset version: validated, split, every image
    featurized (resumable). `boig ingest --help` lists its options."""
    # Handed over whole, so that its options live in one place and polars loads only here.
    from services.trainer.ingest.__main__ import app as ingest_app

    ingest_app(ctx.args, prog_name="boig ingest")


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
    _record_registry(paths.registry, "boigllm")


def _record_registry(registry: Path, name: str) -> None:
    """Record what is published for the gateway (GET /v1/checkpoints); a database that is
    not there is no reason to fail a training that succeeded."""
    from services.common.retraining import RetrainLedger
    from services.trainer.retrain.registry import record_registry

    try:
        record_registry(RetrainLedger(_training_store().database), registry, name)
    except Exception as exc:
        typer.echo(f"warning: the checkpoint list was not recorded: {exc}", err=True)


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


@llm_app.command("retrain")
def retrain_llm(
    enqueue: Annotated[
        bool,
        typer.Option(help="Queue the retrain for the training worker instead of running it here."),
    ] = False,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="Dataset folder (with `latest`) to fold feedback into; default: "
            "BOIG_TRAINER_DATASET_DIR, else the synthetic world's (`make train-llm`)."
        ),
    ] = None,
    featurizer_url: Annotated[
        str | None,
        typer.Option(help="Featurizer for the feedback images; default: start one on loopback."),
    ] = None,
    preset: Annotated[
        Literal["cpu", "cpu-weights", "gpu", "tiny"] | None,
        typer.Option(help="Fine-tuning preset; default: the served checkpoint's own recipe."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=2, help="Override the preset's steps.")
    ] = None,
    account: Annotated[
        list[str] | None,
        typer.Option(help="Fold this account's feedback (repeatable); default: the dataset's."),
    ] = None,
    trusted_key: Annotated[
        list[str] | None,
        typer.Option(help="Trust only these API key prefixes' feedback (repeatable)."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Retrain and decide even when nothing is new.")
    ] = False,
) -> None:
    """Fold new KPI feedback into BoigLLM's dataset, train a candidate, measure it against the
    served checkpoint on the most recent held-out posts, and promote it only if it is better
    beyond the confidence interval; the decision is recorded (`boig checkpoints decisions`)."""
    from services.tooling import llm_recipe
    from services.trainer.retrain.job import RETRAIN, RetrainJob, run_retrain_job

    job = RetrainJob(preset=preset, max_steps=max_steps, force=force)
    settings = _trainer_settings()
    overrides: dict[str, object] = {
        "dataset_dir": dataset or settings.dataset_dir or llm_recipe.default_paths().data
    }
    if account:
        overrides["retrain_accounts"] = account
    if trusted_key:
        overrides["retrain_trusted_keys"] = trusted_key
    if enqueue:
        if dataset is not None or account or trusted_key:
            raise typer.BadParameter(
                "the training worker retrains with its own BOIG_TRAINER_* settings "
                "(dataset, accounts, trusted keys)",
                param_hint="--enqueue",
            )
        run_id = _enqueue(RETRAIN, job.model_dump(mode="json"))
        typer.echo(f"queued retrain {run_id}; follow it with `boig runs show {run_id}`")
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from contextlib import ExitStack

    from services.common.settings import boig_home
    from services.tooling.stack import local_stack

    store = _training_store()
    with ExitStack() as stack:

        def loopback_featurizer() -> str:
            # Started only when the fold has images to describe: nothing new, no start.
            folder = boig_home() / "stack" / "featurizer"
            return stack.enter_context(local_stack(folder, services=("featurizer",))).url(
                "featurizer"
            )

        if featurizer_url is not None:
            overrides["featurizer_url"] = featurizer_url
        outcome = run_retrain_job(
            job,
            settings.model_copy(update=overrides),
            database=store.database,
            featurizer_url=loopback_featurizer if featurizer_url is None else None,
        )
    typer.echo(f"{outcome.action}: {outcome.reason}")
    if outcome.decision is not None:
        _echo_decision(outcome.decision)


def _trainer_settings() -> TrainerSettings:
    from services.trainer.settings import TrainerSettings

    return TrainerSettings()


def _echo_decision(stored: StoredDecision) -> None:
    from services.trainer.retrain.rule import describe_evaluation

    decision = stored.decision
    typer.echo(
        f"{decision.id}  {decision.decided_at:%Y-%m-%d %H:%M:%S}  {decision.checkpoint}  "
        f"{decision.action} ({decision.trigger})  {decision.previous_version} -> "
        f"{decision.current_version}  dataset {decision.dataset_version}"
    )
    typer.echo(f"  {decision.reason}")
    if decision.evaluation is not None:
        for line in describe_evaluation(decision.evaluation):
            typer.echo(f"  {line}")
    if decision.feedback is not None:
        fold = decision.feedback
        typer.echo(
            f"  feedback: {fold.rows} rows ({fold.new} new, {fold.removed} removed, "
            f"{fold.skipped} skipped)"
        )


@checkpoints_app.command("list")
def list_checkpoints(
    name: Annotated[str, typer.Option(help="Registry entry.")] = "boigllm",
) -> None:
    """The published versions, newest first; `*` marks the one served. Also records the
    registry's state for the gateway (GET /v1/checkpoints)."""
    from services.common.retraining import RetrainLedger
    from services.trainer.retrain.registry import record_registry

    settings = _trainer_settings()
    listed = record_registry(RetrainLedger(_training_store().database), settings.registry, name)
    if not listed.items:
        typer.echo(f"no {name} checkpoint in {settings.registry}")
    for item in listed.items:
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in sorted(item.metrics.items()))
        typer.echo(
            f"{'*' if item.current else ' '} {item.version}  {item.created_at:%Y-%m-%d %H:%M}  "
            f"dataset {item.dataset_version} ({item.dataset_sha256[:12]})  {metrics}"
        )


@checkpoints_app.command("promote")
def promote_checkpoint(
    version: Annotated[str, typer.Argument(help="The version to serve.")],
    reason: Annotated[str, typer.Option(help="Why: recorded with the decision.")],
    name: Annotated[str, typer.Option(help="Registry entry.")] = "boigllm",
) -> None:
    """Serve VERSION (e.g. a candidate a retrain rejected), over the evaluation rule."""
    _move(name, version, "promote", reason)


@checkpoints_app.command("rollback")
def rollback_checkpoint(
    version: Annotated[
        str | None,
        typer.Argument(help="An earlier version; default: the one served before the current."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why: recorded with the decision.")] = (
        "rolled back by an operator"
    ),
    name: Annotated[str, typer.Option(help="Registry entry.")] = "boigllm",
) -> None:
    """Serve an earlier checkpoint again: the describer reloads at its next request."""
    if version is None:
        version = _served_before(name)
    _move(name, version, "rollback", reason)


def _served_before(name: str) -> str:
    from services.common.checkpoints import current_checkpoint
    from services.common.retraining import RetrainLedger

    current = current_checkpoint(_trainer_settings().registry, name)
    if current is None:
        raise typer.BadParameter(f"no {name} checkpoint is served: nothing to roll back")
    ledger = RetrainLedger(_training_store().database)
    before: int | None = None
    while True:
        page, before = ledger.page(limit=100, before=before, checkpoint=name)
        for stored in page:
            decision = stored.decision
            previous = decision.previous_version
            if decision.current_version == current.version and previous not in (
                None,
                current.version,
            ):
                assert previous is not None
                return previous
        if before is None:
            raise typer.BadParameter(
                f"no recorded move made {current.version} current: name the version to roll "
                "back to (`boig checkpoints list`)"
            )


def _move(name: str, version: str, action: Literal["promote", "rollback"], reason: str) -> None:
    import getpass
    import socket

    from services.common.errors import BoigError
    from services.common.retraining import RetrainLedger
    from services.trainer.retrain.registry import move_pointer

    try:
        stored = move_pointer(
            registry=_trainer_settings().registry,
            name=name,
            version=version,
            ledger=RetrainLedger(_training_store().database),
            action=action,
            reason=reason,
            actor=f"{getpass.getuser()}@{socket.gethostname()}",
        )
    except BoigError as exc:
        typer.echo(f"{exc.type}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    _echo_decision(stored)


@checkpoints_app.command("decisions")
def list_decisions(
    name: Annotated[str | None, typer.Option(help="Only this registry entry's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 10,
    details: Annotated[
        bool, typer.Option(help="Also what only operators see (folders, trusted keys) as JSON.")
    ] = False,
) -> None:
    """The newest retrain decisions and operators' moves, with their figures."""
    import json

    from services.common.retraining import RetrainLedger

    page, _ = RetrainLedger(_training_store().database).page(limit=limit, checkpoint=name)
    for stored in page:
        _echo_decision(stored)
        if details and stored.details:
            typer.echo("  " + json.dumps(stored.details, sort_keys=True))


def _training_store() -> TrainingStore:
    # Imported for their tables: open() creates every table of the training database.
    import services.common.feedback
    import services.common.retraining  # noqa: F401
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
    if "stage" in progress:  # a retrain: its stage, and its candidate's step while it trains
        done = str(progress["stage"])
        if "step" in progress:
            done += f" step {progress['step']}/{progress.get('steps', '?')}"
        decided = (run.result or {}).get("action")
        done += f", {decided}: {(run.result or {}).get('reason')}" if decided else ""
        error = f" ({run.error_type}: {run.error_message})" if run.error_type else ""
        return f"{run.id}  {run.kind}  {run.state.value}  {done}{error}"
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
