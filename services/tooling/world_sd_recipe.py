"""The world SD end to end: the synthetic world and its ingested dataset (shared with the
BoigLLM recipe) -> captions from the featurized descriptions -> training (resumable) -> the
pipeline folder the generator serves by default (``make models``), and its evaluation
(``make eval-world-sd``)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from rich.console import Console
from tqdm import tqdm

from services.common.clients import FeaturizerClient
from services.common.contracts import Verbalization
from services.common.hashing import file_sha256
from services.common.model_folders import SAMPLING_FILE, read_sampling_defaults
from services.common.settings import default_world_sd_dir
from services.common.staged_folders import staged_folder
from services.generator.tiny_pipeline import prepare_tiny_pipeline
from services.tooling import llm_recipe
from services.tooling.stack import local_stack
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.ingest.rows import read_rows
from services.trainer.world.generate import POSTS_FILE
from services.trainer.world_sd import report
from services.trainer.world_sd.config import CONTINUED_PRESETS, PRESETS, WorldSdConfig
from services.trainer.world_sd.data import CaptionedImage, captioned_images, token_counter
from services.trainer.world_sd.evaluate import Sampling, WorldSdEvaluation, evaluate_world_sd
from services.trainer.world_sd.metrics import FidMeter
from services.trainer.world_sd.model import load_or_build_tokenizer
from services.trainer.world_sd.train import (
    METRICS_FILE,
    TOKENIZER_DIR,
    StageReport,
    train_world_sd,
)

console = Console() if sys.stdout.isatty() else Console(width=200)
MANIFEST = "boig_manifest.json"
FEATURIZE_BATCH = 16
"""Images per featurizer request, as the ingestion sends them (the featurizer refuses more
than BOIG_BATCH_MAX_ITEMS, 32 by default)."""

_README = """# world-sd: a small Stable Diffusion trained on the synthetic brand world

Stable Diffusion 1.x's layout (AutoencoderKL, CLIP text encoder with OpenAI's CLIP tokenizer,
UNet2DConditionModel, DDIM), trained from scratch by `services.tooling.world_sd_recipe`
(preset `{preset}`) on {images} creatives of the synthetic world `{world}` at {size}x{size},
each captioned with the prompt the generator writes from its featurized description.
It draws the world's flat backgrounds, colours and rough shapes; it knows nothing else.

Sample it with guidance {guidance} and {steps} DDIM steps (`{sampling}`).
Training: {seconds}; final losses: autoencoder {vae_loss}, UNet {unet_loss}.
"""


@dataclass(frozen=True)
class WorldSdData:
    """The world's creatives with captions, split as the BoigLLM dataset is (temporal)."""

    train: list[CaptionedImage]
    test: list[CaptionedImage]
    dataset: Path
    posts: Path


def world_sd_data(paths: llm_recipe.LlmPaths, tokenizer_dir: Path) -> WorldSdData:
    posts = llm_recipe.ensure_world(paths)
    dataset = llm_recipe.ensure_dataset(paths, posts, paths.home / "stack")
    media = {row.id: row.media for row in read_rows(posts).rows}
    count = token_counter(load_or_build_tokenizer(tokenizer_dir))
    return WorldSdData(
        train=captioned_images(dataset, media, "train", count_tokens=count),
        test=captioned_images(dataset, media, "test", count_tokens=count),
        dataset=dataset,
        posts=posts,
    )


def run_dir(paths: llm_recipe.LlmPaths, run: str) -> Path:
    return paths.home / "runs" / f"world-sd-{paths.world.name}-{run}"


@dataclass(frozen=True)
class Selection:
    """Which training creatives a run sees: all, or one account's, or one KPI level's (the
    'SD fine-tuned on high-KPI images' baseline trains on ``level="high"``)."""

    account: str | None = None
    level: str | None = None

    def keeps(self, image: CaptionedImage) -> bool:
        return (self.account is None or image.context.account == self.account) and (
            self.level is None or image.level == self.level
        )

    @property
    def suffix(self) -> str:
        parts = [f"account-{self.account}"] if self.account else []
        return "-".join([*parts, *([f"level-{self.level}"] if self.level else [])])


def train(
    paths: llm_recipe.LlmPaths,
    run: str,
    config: WorldSdConfig,
    data: WorldSdData,
    selection: Selection = Selection(),
) -> Path:
    """Train (or resume, or reuse) the run named ``run``; its pipeline folder."""
    folder = run_dir(paths, run)
    images = [image for image in data.train if selection.keeps(image)]
    if not images:
        raise SystemExit(f"no training creatives match {selection}")
    console.print(
        f"world SD ({run}): {len(images)} training creatives at {config.resolution} px, "
        f"autoencoder {config.vae_steps} steps, UNet {config.unet_steps} steps x "
        f"{config.batch_size} -> {folder} (an interrupted run resumes)"
    )
    bars: dict[str, tqdm] = {}  # type: ignore[type-arg]

    def progress(report: StageReport) -> None:
        bar = bars.get(report.stage)
        if bar is None:
            bar = bars[report.stage] = tqdm(
                total=report.total, unit="step", desc=f"world SD {report.stage}"
            )
        bar.n = report.step
        bar.set_postfix(loss=f"{report.loss:.4f}")
        bar.refresh()

    try:
        result = train_world_sd(images, folder, config, probe_images=data.test, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    if result.seconds:
        spent = ", ".join(
            f"{stage} {seconds / 60:.1f} min" for stage, seconds in result.seconds.items()
        )
        console.print(f"world SD trained: {spent}")
    return result.pipeline_dir


DEFAULT_PRESET = "cpu-long"
"""What `make models` trains: the first preset that met the colour goal (~1 h, once)."""


def prepare_world_sd(
    out_dir: Path | None = None,
    preset: str = DEFAULT_PRESET,
    *,
    config: WorldSdConfig | None = None,
    selection: Selection = Selection(),
) -> Path:
    """The world SD at ``out_dir`` (default: the generator's default model folder), trained
    once; instant when it exists. ``config`` overrides the preset (a fine-tune of a base
    model, say); ``selection`` narrows the training creatives."""
    out_dir = Path(out_dir) if out_dir is not None else default_world_sd_dir()
    if (out_dir / "model_index.json").is_file():
        return out_dir
    paths = llm_recipe.default_paths()
    run = "-".join(part for part in (preset, selection.suffix) if part)
    # Read (and caption) the world once, also for a preset that continues another's run.
    data = world_sd_data(paths, run_dir(paths, run) / TOKENIZER_DIR)
    if config is None and preset in CONTINUED_PRESETS:
        start, continued = CONTINUED_PRESETS[preset]
        first = "-".join(part for part in (start, selection.suffix) if part)
        config = continued(train(paths, first, PRESETS[start](), data, selection))
    config = config or PRESETS[preset]()
    pipeline = train(paths, run, config, data, selection)
    folder = run_dir(paths, run)
    with staged_folder(out_dir, already_done=lambda p: (p / "model_index.json").is_file()) as st:
        shutil.copytree(pipeline, st, dirs_exist_ok=True)
        shutil.copy2(folder / METRICS_FILE, st / "training_metrics.jsonl")
        manifest = {
            "preset": preset,
            "selection": {"account": selection.account, "level": selection.level},
            "config": config.model_dump(mode="json"),
            "world": paths.world.name,
            "posts_sha256": file_sha256(paths.world / POSTS_FILE),
        }
        (st / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        losses = _final_losses(folder / METRICS_FILE)
        (st / "README.md").write_text(
            _README.format(
                preset=preset,
                images=sum(selection.keeps(image) for image in data.train),
                world=paths.world.name,
                size=config.resolution,
                guidance=config.guidance_scale,
                steps=config.sample_steps,
                sampling=SAMPLING_FILE,
                seconds=_durations(folder / METRICS_FILE),
                vae_loss=losses.get("vae", "n/a"),
                unet_loss=losses.get("unet", "n/a"),
            ),
            encoding="utf-8",
        )
    return out_dir


def _records(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _final_losses(path: Path) -> dict[str, str]:
    losses: dict[str, str] = {}
    for record in _records(path):
        if "loss" in record:
            losses[str(record["stage"])] = f"{float(record['loss']):.4f}"  # type: ignore[arg-type]
    return losses


def _durations(path: Path) -> str:
    spans: dict[str, list[float]] = {}
    for record in _records(path):
        spans.setdefault(str(record["stage"]), []).append(float(record["time"]))  # type: ignore[arg-type]
    parts = [
        f"{stage} {(max(times) - min(times)) / 60:.1f} min"
        for stage, times in spans.items()
        if stage != "probe" and len(times) > 1
    ]
    return ", ".join(parts) or "n/a"


# --- evaluation -----------------------------------------------------------------------------


def run_evaluation(
    paths: llm_recipe.LlmPaths,
    *,
    model: Path | None = None,
    captions: int = 160,
    samples_per_caption: int = 2,
) -> Path:
    """``make eval-world-sd``: the served world SD (or ``model``) on ``captions`` held-out
    captions, next to the floor, the ceilings and the chance line; table + HTML + JSON."""
    model = Path(model) if model is not None else default_world_sd_dir()
    if not (model / "model_index.json").is_file():
        raise SystemExit(f"no world SD at {model}: run `make models` first")
    # Captions are counted by the model's own tokenizer, as its generator would count them.
    data = world_sd_data(paths, model / "tokenizer")
    held_out = list(data.test)
    random.Random(0).shuffle(held_out)
    if len(held_out) < captions + 2:
        raise SystemExit(f"only {len(held_out)} held-out creatives; ask for fewer captions")
    chosen, reference = held_out[:captions], held_out[captions:]
    recommended = read_sampling_defaults(model)
    sampling = Sampling(
        samples_per_caption=samples_per_caption,
        steps=recommended.steps or Sampling.steps,
        guidance_scale=(
            Sampling.guidance_scale
            if recommended.guidance_scale is None
            else recommended.guidance_scale
        ),
    )
    resolution = int(json.loads((model / "vae" / "config.json").read_text())["sample_size"])
    floor = prepare_tiny_pipeline()
    with local_stack(paths.home / "stack" / "eval-world-sd", services=("featurizer",)) as stack:
        evaluation = asyncio.run(
            _evaluate_over_http(
                stack.url("featurizer"),
                chosen,
                reference,
                model,
                floor,
                sampling,
                resolution,
                FidMeter(),
            )
        )
    report.print_report(evaluation, console)
    stem = paths.reports / f"world-sd-{model.name}"
    html_path = report.write_html(evaluation, stem.with_suffix(".html"))
    json_path = report.write_json(evaluation, stem.with_suffix(".json"))
    console.print(f"HTML report: {html_path}\nresults as JSON: {json_path}")
    return html_path


async def _evaluate_over_http(
    featurizer_url: str,
    chosen: list[CaptionedImage],
    reference: list[CaptionedImage],
    model: Path,
    floor: Path,
    sampling: Sampling,
    resolution: int,
    fid: FidMeter,
) -> WorldSdEvaluation:
    async with FeaturizerClient(featurizer_url, timeout=300.0) as client:
        featurizer = await HttpFeaturizer.connect(client)

        async def featurize(images: list[Image.Image]) -> list[Verbalization]:
            return await featurizer.featurize_images(images, batch_size=FEATURIZE_BATCH)

        return await evaluate_world_sd(
            chosen,
            trained=model,
            floor=floor,
            reference=reference,
            featurize=featurize,
            fid=fid,
            sampling=sampling,
            resolution=resolution,
            progress=lambda stage: console.print(f"evaluation: {stage}"),
        )
