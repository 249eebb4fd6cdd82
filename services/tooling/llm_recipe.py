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
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from tqdm import tqdm

from services.common.checkpoints import BOIGLLM_CHECKPOINT, current_checkpoint
from services.common.clients import DescriberClient
from services.common.settings import boig_home, checkpoint_registry
from services.describer.model_prep import SMOLLM2_NAME
from services.tooling.stack import local_stack
from services.trainer.evaluate import metrics, report
from services.trainer.evaluate.results import EvaluationResult
from services.trainer.evaluate.run import EvaluationSettings, evaluate
from services.trainer.finetune.config import PRESETS, FinetuneConfig
from services.trainer.finetune.data import load_examples, resolve_dataset_dir
from services.trainer.finetune.publish import publish_trained
from services.trainer.finetune.train import StepReport, TrainResult, finetune
from services.trainer.ingest.dataset import LATEST, MANIFEST, Direction, InstructionExample
from services.trainer.ingest.pipeline import ingest_over_http
from services.trainer.ingest.rows import read_rows
from services.trainer.world.brands import DEFAULT_BRANDS
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

    @property
    def registry(self) -> Path:
        return checkpoint_registry(self.home)

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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def current_dataset(paths: LlmPaths, posts: Path) -> Path | None:
    """The latest dataset version built from exactly this posts file, if any."""
    if not (paths.data / LATEST).is_file():
        return None
    folder = resolve_dataset_dir(paths.data)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder if manifest.get("source", {}).get("sha256") == _sha256(posts) else None


def ensure_dataset(paths: LlmPaths, posts: Path, run_dir: Path) -> Path:
    existing = current_dataset(paths, posts)
    if existing is not None:
        console.print(f"dataset: reusing {existing}")
        return existing
    console.print("dataset: featurizing the world through a featurizer on loopback")
    with local_stack(run_dir / "featurizer", services=("featurizer",)) as stack:
        outcome = asyncio.run(
            ingest_over_http(posts, out=paths.data, featurizer_url=stack.url("featurizer"))
        )
    console.print(outcome.summary.table())
    return outcome.version_dir


def train(paths: LlmPaths, config: FinetuneConfig) -> TrainResult:
    posts = ensure_world(paths)
    dataset = ensure_dataset(paths, posts, paths.home / "stack")
    console.print(
        f"fine-tuning {config.base_model.name}: {config.max_steps} steps of {config.batch_size} "
        f"-> {paths.run} (an interrupted run resumes)"
    )
    with tqdm(total=config.max_steps, unit="step") as bar:

        def progress(update: StepReport) -> None:
            bar.n = update.step
            bar.set_postfix(loss=f"{update.loss:.3f}")
            bar.refresh()

        result = finetune(dataset, paths.run, config, progress=progress)
    ref = publish_trained(result.out_dir, paths.registry, dataset_dir=dataset, config=config)
    console.print(
        f"trained {result.steps} steps in {result.seconds / 60:.1f} min, final loss "
        f"{result.final_loss:.3f}, eval loss {result.eval_loss}; published "
        f"{ref.name} {ref.version} -> {paths.registry}"
    )
    return result


def cpu_config(paths: LlmPaths, max_steps: int | None = None) -> FinetuneConfig:
    config = PRESETS["cpu"](paths.base_model)
    if max_steps is None:
        return config
    warmup = min(config.warmup_steps, max_steps - 1)
    return config.model_copy(update={"max_steps": max_steps, "warmup_steps": warmup})


@contextmanager
def describers(paths: LlmPaths, with_base: bool) -> Iterator[tuple[str, str | None]]:
    """URLs of a describer serving the current checkpoint and, optionally, one serving the
    base model; both stop when the block ends. The evaluation asks both at once, so each
    gets its share of the cores rather than both contending for all of them."""
    half_the_cores = str(max(1, (os.cpu_count() or 1) // 2))
    per_process = {"BOIG_DESCRIBER_TORCH_THREADS": half_the_cores} if with_base else {}
    with ExitStack() as stack:
        tuned = stack.enter_context(
            local_stack(
                paths.home / "stack" / "describer-boigllm",
                services=("describer",),
                extra_env={
                    "BOIG_DESCRIBER_CHECKPOINT_REGISTRY": str(paths.registry),
                    **per_process,
                },
            )
        )
        base_url = None
        if with_base:
            base = stack.enter_context(
                local_stack(
                    paths.home / "stack" / "describer-base",
                    services=("describer",),
                    extra_env=per_process,
                )
            )
            base_url = base.url("describer")
        yield tuned.url("describer"), base_url


def run_evaluation(paths: LlmPaths, settings: EvaluationSettings, *, with_base: bool) -> Path:
    posts = paths.world / POSTS_FILE
    dataset = current_dataset(paths, posts) if posts.is_file() else None
    checkpoint = current_checkpoint(paths.registry, BOIGLLM_CHECKPOINT)
    if dataset is None or checkpoint is None:
        raise SystemExit("no trained BoigLLM for this world: run `make train-llm` first")
    media = {row.id: row.media for row in read_rows(posts).rows}
    meta = {
        "checkpoint": f"{checkpoint.name} {checkpoint.version}",
        "dataset": str(dataset),
        "world": str(paths.world),
        "split": "temporal, per account: the last 20% of each brand's posts are held out",
    }
    train_examples = load_examples(dataset, "train")
    test_examples = load_examples(dataset, "test")
    embed = metrics.MiniLmEmbedder()
    with describers(paths, with_base) as (tuned_url, base_url):
        result = asyncio.run(
            _evaluate(
                train_examples,
                test_examples,
                tuned_url,
                base_url,
                settings,
                media,
                embed,
                meta,
                checkpoint.version,
            )
        )
    report.print_report(result, console)
    stem = paths.reports / f"boigllm-{checkpoint.version}"
    html = report.write_html(result, stem.with_suffix(".html"))
    data = report.write_json(result, stem.with_suffix(".json"))
    console.print(f"HTML report: {html}\nresults as JSON: {data}")
    return html


async def _evaluate(
    train_examples: dict[Direction, list[InstructionExample]],
    test_examples: dict[Direction, list[InstructionExample]],
    tuned_url: str,
    base_url: str | None,
    settings: EvaluationSettings,
    media: dict[str, Path],
    embed: metrics.MiniLmEmbedder,
    meta: dict[str, str],
    checkpoint_version: str,
) -> EvaluationResult:
    async with AsyncExitStack() as stack:
        # Generation on 2 cores is slow: allow each request minutes, not seconds.
        tuned = await stack.enter_async_context(DescriberClient(tuned_url, timeout=600.0))
        base = (
            await stack.enter_async_context(DescriberClient(base_url, timeout=600.0))
            if base_url is not None
            else None
        )
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
        )
