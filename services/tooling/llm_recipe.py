"""`make train-llm` and `make eval-llm`: BoigLLM on the synthetic world, end to end.

train: generate the world (once) -> featurize and ingest it through a featurizer on loopback
(once per world) -> fine-tune SmolLM2 with the CPU preset (resumes if interrupted) -> publish
the adapter to the checkpoint registry.

evaluate: start two describers on loopback, one serving the registry's current checkpoint and
one the bare base model, and score both and the in-process baselines on the held-out split.
Everything lives under BOIG_HOME (``~/.cache/boig`` by default).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from rich.console import Console
from tqdm import tqdm

from services.common.checkpoints import BOIGLLM_CHECKPOINT, current_checkpoint, load_manifest
from services.common.clients import DescriberClient
from services.common.hashing import file_sha256
from services.common.history import HISTORY_FORMAT, HistoryStore
from services.common.prompts import PROMPT_VERSION
from services.common.serving_profile import ServingProfile
from services.common.settings import (
    SMOLLM2_NAME,
    boig_home,
    checkpoint_registry,
    default_history_path,
)
from services.tooling.stack import local_stack
from services.trainer.evaluate import metrics, report
from services.trainer.evaluate.results import EvaluationResult
from services.trainer.evaluate.run import (
    BASE_MODEL,
    BOIGLLM,
    BOIGLLM_SAMPLED_COLORS,
    BOIGLLM_WITHOUT_RETRIEVAL,
    EvaluationSettings,
    OtherConfiguration,
    evaluate,
)
from services.trainer.finetune.config import PRESETS, FinetuneConfig
from services.trainer.finetune.data import load_examples, resolve_dataset_dir
from services.trainer.finetune.probe import Probe, ProbeResult
from services.trainer.finetune.publish import dataset_ref, publish_trained
from services.trainer.finetune.train import StepReport, TrainResult, finetune
from services.trainer.ingest.dataset import (
    LATEST,
    MANIFEST,
    TRAIN_HISTORY_FILE,
    Direction,
    InstructionExample,
    history_of,
)
from services.trainer.ingest.pipeline import ingest_over_http
from services.trainer.ingest.rows import read_rows
from services.trainer.world.brands import DEFAULT_BRANDS, SUNBREW
from services.trainer.world.generate import (
    GENERATOR_VERSION,
    POSTS_FILE,
    WORLD_FILE,
    generate_world,
)

logger = logging.getLogger(__name__)
# Under make or a pipe rich would wrap the tables at 80 columns, hiding the metric names.
console = Console() if sys.stdout.isatty() else Console(width=200)


@dataclass(frozen=True)
class LlmPaths:
    """Where the recipe keeps each stage's output, so each stage runs once."""

    home: Path
    seed: int
    posts_per_brand: int

    @property
    def world(self) -> Path:
        # The generator version is in the name: a new generator never reuses an old world.
        name = f"v{GENERATOR_VERSION}-seed{self.seed}-posts{self.posts_per_brand}"
        return self.home / "worlds" / name

    @property
    def data(self) -> Path:
        return self.home / "datasets" / self.world.name

    @property
    def run(self) -> Path:
        return self.home / "runs" / f"boigllm-{self.world.name}"

    def run_for(self, dataset: Path) -> Path:
        """A fine-tune's folder on ``dataset``: the world's run, or one per version folded
        with feedback (a finished run is not resumed on other data)."""
        if len(folded_lineage(dataset)) <= 1:
            return self.run
        return self.run.with_name(f"{self.run.name}-{dataset.name}")

    @property
    def registry(self) -> Path:
        return checkpoint_registry(self.home)

    @property
    def history(self) -> Path:
        """The describer's history store (every ingested post of every account)."""
        return self.home / default_history_path().relative_to(boig_home())

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def base_model(self) -> Path:
        """The folder `make models` prepares, under this recipe's home."""
        return self.home / "models" / SMOLLM2_NAME


def default_paths(seed: int = 0, posts_per_brand: int = 500) -> LlmPaths:
    return LlmPaths(home=boig_home(), seed=seed, posts_per_brand=posts_per_brand)


def ensure_world(paths: LlmPaths) -> Path:
    posts = paths.world / POSTS_FILE
    if posts.is_file() and (paths.world / WORLD_FILE).is_file():
        console.print(f"world: reusing {paths.world}")
        return posts
    console.print(f"world: generating {paths.posts_per_brand} posts per brand -> {paths.world}")
    total = paths.posts_per_brand * len(DEFAULT_BRANDS)
    with tqdm(total=total, unit="post") as bar:
        generate_world(
            paths.world,
            seed=paths.seed,
            posts_per_brand=paths.posts_per_brand,
            overwrite=True,
            progress=bar.update,  # called with 1 per post
        )
    return posts


def current_dataset(paths: LlmPaths, posts: Path) -> Path | None:
    """The latest dataset version built from exactly this posts file, if any."""
    return _dataset_of(paths.data, posts)


def ensure_dataset(paths: LlmPaths, posts: Path, run_dir: Path) -> Path:
    existing = current_dataset(paths, posts)
    if existing is not None:
        console.print(f"dataset: reusing {existing}")
        ensure_histories(existing, paths.history)
        return existing
    console.print("dataset: featurizing the world through a featurizer on loopback")
    with local_stack(run_dir / "featurizer", services=("featurizer",)) as stack:
        outcome = asyncio.run(
            ingest_over_http(
                posts,
                out=paths.data,
                featurizer_url=stack.url("featurizer"),
                history_path=paths.history,
            )
        )
    console.print(outcome.summary.table())
    return outcome.version_dir


def training_history(dataset: Path) -> Path:
    """The training split's history (written by ingest; backfilled for older datasets): what
    a describer reads when its answers train or are judged against held-out posts, which the
    serving store also holds and which would leak the future into its prompts."""
    path = dataset / TRAIN_HISTORY_FILE
    if not path.is_file() or HistoryStore.read(path).format < HISTORY_FORMAT:
        history_of(load_examples(dataset, "train")[Direction.CONTENT]).write(path)
    return path


def ensure_histories(dataset: Path, serving_history: Path) -> None:
    """Backfill what ingest writes today for a dataset ingested before it did: the training
    split's history, and the dataset's accounts in the describer's store."""
    train = load_examples(dataset, "train")[Direction.CONTENT]
    training_history(dataset)
    store = HistoryStore.read(serving_history) if serving_history.is_file() else HistoryStore()
    # An older store's other accounts keep its format (they lack what the newer one adds)
    # until their own ingest: this rewrites the dataset's accounts again on each call, ~1 s.
    outdated = store.format < HISTORY_FORMAT
    if outdated or not {e.context.account for e in train} <= store.accounts():
        everything = train + load_examples(dataset, "test")[Direction.CONTENT]
        store.merge(history_of(everything)).write(serving_history)


def train(paths: LlmPaths, config: FinetuneConfig) -> TrainResult:
    posts = ensure_world(paths)
    dataset = ensure_dataset(paths, posts, paths.home / "stack")
    run = paths.run_for(dataset)
    console.print(
        f"fine-tuning {config.base_model.name}: {config.max_steps} steps of {config.batch_size} "
        f"-> {run} (an interrupted run resumes)"
    )
    with tqdm(total=config.max_steps, unit="step") as bar:

        def progress(update: StepReport) -> None:
            bar.n = update.step
            bar.set_postfix(loss=f"{update.loss:.3f}")
            bar.refresh()

        result = finetune(dataset, run, config, progress=progress)
    ref = publish_trained(result.out_dir, paths.registry, dataset_dir=dataset, config=config)
    console.print(
        f"trained {result.steps} steps in {result.seconds / 60:.1f} min, final loss "
        f"{result.final_loss:.3f}, validation loss {result.eval_loss}; published "
        f"{ref.name} {ref.version} -> {paths.registry}"
    )
    if result.probe is not None:
        console.print("conditioning probe on validation rows of the training split:")
        for line in result.probe.lines():
            console.print("  " + line, markup=False)
    if result.profile is not None:
        console.print(
            f"serving: retrieval {'on' if result.profile.retrieval else 'off'}, behaviour "
            f"{result.profile.behaviour} (temperature {result.profile.temperature:.2f})"
        )
    return result


def served_checkpoint_is_current(paths: LlmPaths, dataset: Path) -> bool:
    """The registry serves a BoigLLM trained on ``dataset`` (or a version it was folded from)
    with today's prompts."""
    checkpoint = current_checkpoint(paths.registry, BOIGLLM_CHECKPOINT)
    if checkpoint is None:
        return False
    manifest = load_manifest(checkpoint, verify=False)
    state_file = checkpoint.path / "train_state.json"
    try:
        prompt_version = json.loads(state_file.read_text(encoding="utf-8")).get("prompt_version")
    except (OSError, ValueError):
        return False
    # Any version of the dataset's lineage: after a retrain the served checkpoint is the one
    # its gate kept, maybe trained before the latest fold; training here would bypass the gate.
    trained_on = {dataset_ref(version).manifest_sha256 for version in folded_lineage(dataset)}
    return manifest.data.manifest_sha256 in trained_on and prompt_version == PROMPT_VERSION


def prepare_boigllm(paths: LlmPaths | None = None) -> Path:
    """`make models`: the BoigLLM the demo serves, trained once on the synthetic world (cpu
    preset, ~20 min on 2 cores) and published; later runs find it and return at once."""
    paths = paths or default_paths()
    posts = ensure_world(paths)
    dataset = ensure_dataset(paths, posts, paths.home / "stack")
    if not served_checkpoint_is_current(paths, dataset):
        train(paths, preset_config(paths))
    checkpoint = current_checkpoint(paths.registry, BOIGLLM_CHECKPOINT)
    assert checkpoint is not None
    return checkpoint.path


def probe_checkpoint(
    paths: LlmPaths, checkpoint: Path | None = None, *, rows: int = 96, seed: int = 0
) -> ProbeResult:
    """`boig llm probe`: the conditioning probe of a checkpoint (default: the registry's
    current one) on held-out rows of the world's test split, prompts carrying the training
    split's history as the describer serves them, behaviour read as the checkpoint says."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    posts = paths.world / POSTS_FILE
    dataset = current_dataset(paths, posts) if posts.is_file() else None
    if checkpoint is None:
        current = current_checkpoint(paths.registry, BOIGLLM_CHECKPOINT)
        checkpoint = current.path if current is not None else None
    if dataset is None or checkpoint is None:
        raise SystemExit("no trained BoigLLM for this world: run `make train-llm` first")
    profile = ServingProfile.read(checkpoint)
    train_examples = load_examples(dataset, "train")
    test_examples = load_examples(dataset, "test")
    history = history_of(train_examples[Direction.CONTENT]) if profile.retrieval else None
    probe = Probe.build(
        test_examples[Direction.CONTENT],
        test_examples[Direction.BEHAVIOUR],
        train_examples[Direction.CONTENT],
        history=history,
        leave_out=False,
        rows=rows,
        seed=seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(paths.base_model), local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(
        str(paths.base_model), local_files_only=True, dtype=torch.float32
    )
    model = PeftModel.from_pretrained(base, str(checkpoint), is_trainable=False)
    result = probe.run(model, tokenizer, temperature=profile.temperature)
    console.print(f"probe of {checkpoint} on held-out rows of {dataset}:")
    for line in result.lines():
        console.print("  " + line, markup=False)
    return result


def preset_config(
    paths: LlmPaths, preset: str = "cpu", max_steps: int | None = None
) -> FinetuneConfig:
    config = PRESETS[preset](paths.base_model)
    if max_steps is None:
        return config
    warmup = min(config.warmup_steps, max_steps - 1)
    return config.model_copy(update={"max_steps": max_steps, "warmup_steps": warmup})


@dataclass(frozen=True)
class ServedConfiguration:
    """One describer process of the evaluation: what it serves and how."""

    label: str
    checkpoint: bool
    """Serve the registry's current checkpoint (else the bare base model, few-shot)."""
    retrieval: str = "auto"
    palette_samples: int | None = None
    """Colours lines averaged per description (None: the describer's default)."""
    levels: bool = True
    """Also read levels. False where the configuration reads them exactly as BoigLLM does
    (it differs only in how it decodes descriptions): asking again would only cost time."""


class Ablation(StrEnum):
    """A variant of BoigLLM as served that the evaluation can add next to it."""

    NO_HISTORY = "no-history"
    """Without its history lines: what the weights alone learned."""
    SAMPLED_COLORS = "sampled-colors"
    """Colours lines averaged over 4 sampled draws (and the history) instead of the greedy
    line and the history (descriptions only)."""


ABLATIONS = {
    Ablation.NO_HISTORY: ServedConfiguration(
        BOIGLLM_WITHOUT_RETRIEVAL, checkpoint=True, retrieval="off"
    ),
    Ablation.SAMPLED_COLORS: ServedConfiguration(
        BOIGLLM_SAMPLED_COLORS, checkpoint=True, palette_samples=4, levels=False
    ),
}


def evaluation_configurations(
    *, with_base: bool, ablations: Iterable[Ablation] = ()
) -> list[ServedConfiguration]:
    """BoigLLM as served first; then each of ``ablations``; then the base model."""
    configurations = [ServedConfiguration(BOIGLLM, checkpoint=True)]
    configurations += [ABLATIONS[ablation] for ablation in dict.fromkeys(ablations)]
    if with_base:
        configurations.append(ServedConfiguration(BASE_MODEL, checkpoint=False, retrieval="off"))
    return configurations


@contextmanager
def describers(
    paths: LlmPaths, configurations: list[ServedConfiguration], history: Path
) -> Iterator[dict[str, str]]:
    """Label -> URL of a describer per configuration, all reading ``history`` (the training
    split's: the held-out posts and anything after them are never in a prompt); they stop
    when the block ends. The evaluation asks all at once, so each process gets an even share
    of the cores rather than all contending for every core."""
    threads = str(max(1, (os.cpu_count() or 1) // len(configurations)))
    with ExitStack() as stack:
        urls = {}
        for index, configuration in enumerate(configurations):
            env = {
                "BOIG_DESCRIBER_TORCH_THREADS": threads,
                "BOIG_DESCRIBER_HISTORY_PATH": str(history),
                "BOIG_DESCRIBER_RETRIEVAL": configuration.retrieval,
                # The evaluation is the only client and waits for every answer (600 s a
                # request): a describer refusing queued work as "overloaded" would only turn
                # slow rows into failed ones.
                "BOIG_DESCRIBER_MAX_QUEUE_WAIT_SECONDS": "600",
            }
            if configuration.checkpoint:
                env["BOIG_DESCRIBER_CHECKPOINT_REGISTRY"] = str(paths.registry)
            if configuration.palette_samples is not None:
                env["BOIG_DESCRIBER_PALETTE_SAMPLES"] = str(configuration.palette_samples)
            served = stack.enter_context(
                local_stack(
                    paths.home / "stack" / f"describer-eval-{index}",
                    services=("describer",),
                    extra_env=env,
                )
            )
            urls[configuration.label] = served.url("describer")
        yield urls


class DatasetMismatch(SystemExit):
    """The checkpoint was trained on another dataset than the one about to be evaluated."""


def check_dataset(checkpoint_manifest_sha256: str, dataset: Path) -> None:
    """Refuse to evaluate a checkpoint on a dataset other than its own: its test split may
    overlap the other dataset's training posts, or its levels mean something else."""
    actual = dataset_ref(dataset).manifest_sha256
    if actual != checkpoint_manifest_sha256:
        raise DatasetMismatch(
            "the current checkpoint was trained on dataset manifest "
            f"{checkpoint_manifest_sha256[:12]}, not on {dataset} ({actual[:12]}): train it "
            "on this dataset (`make train-llm`) or evaluate the dataset it was trained on"
        )


def ensure_holdout_dataset(paths: LlmPaths) -> tuple[Path, Path]:
    """A world of one brand that BoigLLM is never trained on (``SUNBREW``), ingested like the
    main world but kept out of the describer's store: the held-out account evaluation.
    Returns (dataset version folder, posts file)."""
    world = paths.home / "worlds" / f"{paths.world.name}-{SUNBREW.account}"
    if not (world / POSTS_FILE).is_file():
        console.print(f"held-out account: generating {SUNBREW.account} -> {world}")
        generate_world(
            world,
            seed=paths.seed,
            brands=(SUNBREW,),
            posts_per_brand=paths.posts_per_brand,
            overwrite=True,
        )
    data = paths.home / "datasets" / world.name
    posts = world / POSTS_FILE
    existing = _dataset_of(data, posts)
    if existing is not None:
        return existing, posts
    with local_stack(paths.home / "stack" / "featurizer", services=("featurizer",)) as stack:
        outcome = asyncio.run(
            ingest_over_http(posts, out=data, featurizer_url=stack.url("featurizer"))
        )
    return outcome.version_dir, posts


def _dataset_of(data: Path, posts: Path) -> Path | None:
    """The latest version under the dataset root ``data`` if it was built from ``posts``, or
    folded (KPI feedback, `make retrain`) onto versions the first of which was."""
    if not (data / LATEST).is_file():
        return None
    lineage = folded_lineage(resolve_dataset_dir(data))
    if not lineage:
        return None
    first = json.loads((lineage[-1] / MANIFEST).read_text(encoding="utf-8"))
    return lineage[0] if first.get("source", {}).get("sha256") == file_sha256(posts) else None


def folded_lineage(version: Path) -> list[Path]:
    """``version`` and the versions it was folded from, newest first, back to one ingested
    from a posts file (each fold names its previous version in its manifest); empty when a
    manifest is unreadable or a previous version is gone."""
    lineage: list[Path] = []
    folder = version
    while folder not in lineage:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        lineage.append(folder)
        previous = manifest.get("feedback", {}).get("previous_version")
        if not isinstance(previous, str):
            return lineage
        folder = version.parent / previous
    return []  # a cycle: no version it can be traced to


@dataclass(frozen=True)
class EvaluationPart:
    """One set of held-out rows: the main world's, or the never-trained account's."""

    name: str
    dataset: Path
    posts: Path
    settings: EvaluationSettings


def run_evaluation(
    paths: LlmPaths,
    settings: EvaluationSettings,
    *,
    with_base: bool,
    ablations: Iterable[Ablation] = (),
    holdout_account: bool = True,
    holdout_rows_per_level: int = 10,
) -> list[Path]:
    posts = paths.world / POSTS_FILE
    dataset = current_dataset(paths, posts) if posts.is_file() else None
    checkpoint = current_checkpoint(paths.registry, BOIGLLM_CHECKPOINT)
    if dataset is None or checkpoint is None:
        raise SystemExit("no trained BoigLLM for this world: run `make train-llm` first")
    check_dataset(load_manifest(checkpoint, verify=False).data.manifest_sha256, dataset)
    ensure_histories(dataset, paths.history)
    parts = [EvaluationPart("", dataset, posts, settings)]
    # The histories every describer reads: the training splits' posts only, so prompts never
    # see a held-out post (or anything after one).
    history = HistoryStore.read(dataset / TRAIN_HISTORY_FILE)
    if holdout_account:
        holdout, holdout_posts = ensure_holdout_dataset(paths)
        trained_accounts = history.accounts()
        holdout_history = HistoryStore.read(training_history(holdout))
        if holdout_history.accounts() & trained_accounts:
            raise SystemExit(f"the held-out world shares accounts with {dataset}")
        history = history.merge(holdout_history)
        few = dataclasses.replace(settings, rows_per_level=holdout_rows_per_level)
        parts.append(EvaluationPart(f"-{SUNBREW.account}", holdout, holdout_posts, few))
    history_file = history.write(paths.home / "stack" / "evaluation-history.json")
    embed = metrics.MiniLmEmbedder()
    configurations = evaluation_configurations(with_base=with_base, ablations=ablations)
    pages = []
    with describers(paths, configurations, history_file) as urls:
        for part in parts:
            media = {row.id: row.media for row in read_rows(part.posts).rows}
            meta = {
                "checkpoint": f"{checkpoint.name} {checkpoint.version}",
                "dataset": str(part.dataset),
                "world": str(part.posts.parent),
                "split": "temporal, per account: the last 20% of each brand's posts are held out",
                "history": "the training split's posts (prompts never see a held-out post)",
            }
            if part.name:
                meta["account"] = f"{SUNBREW.account}: never in BoigLLM's training data"
            result = asyncio.run(
                _evaluate(
                    load_examples(part.dataset, "train"),
                    load_examples(part.dataset, "test"),
                    urls,
                    {c.label: c.levels for c in configurations},
                    part.settings,
                    media,
                    embed,
                    meta,
                    checkpoint.version,
                )
            )
            if part.name:
                console.rule(f"held-out account: {SUNBREW.account} (never trained on)")
            report.print_report(result, console)
            stem = paths.reports / f"boigllm-{checkpoint.version}{part.name}"
            html = report.write_html(result, stem.with_suffix(".html"))
            data = report.write_json(result, stem.with_suffix(".json"))
            console.print(f"HTML report: {html}\nresults as JSON: {data}")
            pages.append(html)
    return pages


async def _evaluate(
    train_examples: dict[Direction, list[InstructionExample]],
    test_examples: dict[Direction, list[InstructionExample]],
    urls: dict[str, str],
    levels: dict[str, bool],
    settings: EvaluationSettings,
    media: dict[str, Path],
    embed: metrics.MiniLmEmbedder,
    meta: dict[str, str],
    checkpoint_version: str,
) -> EvaluationResult:
    async with AsyncExitStack() as stack:
        # Generation on 2 cores is slow: allow each request minutes, not seconds.
        clients = {
            label: await stack.enter_async_context(DescriberClient(url, timeout=600.0))
            for label, url in urls.items()
        }
        tuned = clients.pop(BOIGLLM)
        base = clients.pop(BASE_MODEL, None)
        return await evaluate(
            train_examples,
            test_examples,
            boigllm=tuned,
            base=base,
            settings=settings,
            media=media,
            embed=embed,
            meta=meta,
            checkpoint_version=checkpoint_version,
            others={
                label: OtherConfiguration(client, checkpoint_version, behaviour=levels[label])
                for label, client in clients.items()
            },
        )
