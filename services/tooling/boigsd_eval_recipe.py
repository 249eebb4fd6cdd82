"""`make eval-sd`: BoigSD, SFT, best-of-N, prompt-only and the base model on held-out future
posts of the synthetic world, judged on the hidden true KPI (services.trainer.evaluate.sd).

Two stacks run on loopback: the training one (featurizer, describer serving the registry's
BoigLLM, scorer), which writes the prompts and gives the training reward, and the judge (a
featurizer of its own with a second detector, another seed and width), whose objects the
ground truth reads. The SFT baseline is the world SD fine-tuned on the training split's
high-KPI creatives (trained here once, then reused).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console

from services.common.boigsd_lora import LORA_WEIGHTS_FILE, load_boigsd_lora
from services.common.clients import (
    DescriberClient,
    FeaturizerClient,
    ScorerClient,
    call_with_retries,
)
from services.common.contracts import (
    Context,
    Creative,
    KpiLevel,
    KpiTarget,
    RewardName,
    ScoreRequest,
    Verbalization,
)
from services.common.hashing import file_sha256
from services.common.image_prompts import render_prompt
from services.common.images import encode_png
from services.common.model_folders import folder_version, read_sampling_defaults
from services.common.settings import default_world_sd_dir
from services.tooling import boigsd_recipe, llm_recipe, world_sd_recipe
from services.tooling.stack import local_stack
from services.trainer.ddpo.job import BoigsdJob, config_for, read_job
from services.trainer.ddpo.run import LORA_DIR, read_evaluation, snapshots
from services.trainer.evaluate.sd import efficacy, report
from services.trainer.evaluate.sd.efficacy import (
    BASE,
    BOIGSD,
    PROMPT_ONLY,
    REAL,
    SFT,
    HeldOutPost,
    JudgedMethod,
    MethodImages,
    SdEfficacy,
)
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.world.brands import DEFAULT_BRANDS
from services.trainer.world.generate import POSTS_FILE, TRUTH_FILE, generate_world
from services.trainer.world_sd.config import cpu_preset
from services.trainer.world_sd.data import load_image, token_counter
from services.trainer.world_sd.evaluate import Sampling, load_sampler, sample_captions
from services.trainer.world_sd.model import load_or_build_tokenizer

console = Console(stderr=True)

JUDGE_DETECTOR_SEED = 1
JUDGE_DETECTOR_WIDTH = 0.1875
"""The judge's detector: trained on other generated scenes (another seed) with 1.5 times the
reward detector's channels, so the two do not share their mistakes."""
SFT_STEPS = 300
"""UNet steps of the SFT baseline on the high-KPI creatives (~6 min on 2 cores)."""
JUDGE_BATCH = 32
CURVE_POINTS = 7
"""Snapshots of the DDPO run judged for the curve over training (each: posts x curve_samples
images)."""


@dataclass(frozen=True)
class EvalSdSettings:
    posts: int = 64
    samples: int = 4
    """Images per post and method (each post its own seeds, the same for every method)."""
    best_of: int = 4
    """N of best-of-N: the best of the prompt-only method's first N images."""
    curve_samples: int = 2
    """Images per post for each earlier BoigSD snapshot (the curve over training)."""
    sft: bool = True
    seed: int = 0


def judge_detector(home: Path) -> Path:
    """The judge's detector weights, trained once (~6 min) and cached under ``home``."""
    from services.trainer.detector.config import DetectorConfig
    from services.trainer.detector.prepare import prepare_detector

    config = DetectorConfig(seed=JUDGE_DETECTOR_SEED, width_multiple=JUDGE_DETECTOR_WIDTH)
    return prepare_detector(home / "models" / "judge-detector", config=config)


def sft_pipeline(
    paths: llm_recipe.LlmPaths, model: Path, data: world_sd_recipe.WorldSdData
) -> Path:
    """The world SD fine-tuned on the training split's high-KPI creatives: the paper's
    'SD fine-tuned on high-KPI images' (the whole UNet, as the world SD itself was trained,
    not a LoRA: the model is small enough)."""
    config = cpu_preset().model_copy(
        update={
            "base_model": model,
            "unet_steps": SFT_STEPS,
            "warmup_steps": 20,
            "learning_rate": 2.5e-4,
            "sample_every": 0,
        }
    )
    # Named after the base weights: a retrained world SD gets a new SFT, not a stale one.
    run = f"sft-high-from-{folder_version(model)[:8]}"
    return world_sd_recipe.train(
        paths, run, config, data, world_sd_recipe.Selection(level=KpiLevel.HIGH.value)
    )


def ensure_truth(paths: llm_recipe.LlmPaths) -> Path:
    """The world's hidden truth (every post's drawn attributes and expected KPI), kept under
    ``BOIG_HOME/truth/``, apart from the data training reads. The world is generated without
    it, so it is regenerated here once from the world's seed, into a scratch folder, and
    refused unless the posts come out byte-identical to the world's."""
    out = paths.home / "truth" / paths.world.name / TRUTH_FILE
    stamp = out.with_suffix(".posts-sha256")
    posts_sha = file_sha256(paths.world / POSTS_FILE)
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == posts_sha:
        return out
    console.print(f"eval-sd: regenerating {paths.world.name} for its hidden truth (once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        world, truth = Path(scratch) / "world", Path(scratch) / "truth"
        generate_world(
            world, seed=paths.seed, posts_per_brand=paths.posts_per_brand, truth_dir=truth
        )
        ours, theirs = world / POSTS_FILE, paths.world / POSTS_FILE
        if ours.read_bytes() != theirs.read_bytes():
            raise SystemExit(f"{theirs} is not what its seed generates: cannot recover its truth")
        os.replace(truth / TRUTH_FILE, out)
    stamp.write_text(posts_sha + "\n")
    return out


def held_out_posts(
    paths: llm_recipe.LlmPaths,
    model: Path,
    data: world_sd_recipe.WorldSdData,
    settings: EvalSdSettings,
) -> list[HeldOutPost]:
    """``settings.posts`` posts of the test split (the most recent period) of the trained
    brands, drawn with a fixed seed, each with its real creative at the model's resolution."""
    brands = {brand.account: brand for brand in DEFAULT_BRANDS}
    truth = {
        row["id"]: row
        for row in (
            json.loads(line)
            for line in ensure_truth(paths).read_text(encoding="utf-8").splitlines()
            if line.strip()
        )
    }
    candidates = [
        image
        for image in data.test
        if image.context.account in brands and image.context.posted_at is not None
    ]
    random.Random(settings.seed).shuffle(candidates)
    if len(candidates) < settings.posts:
        raise SystemExit(f"only {len(candidates)} held-out posts; ask for fewer")
    resolution = _resolution(model)
    posts = []
    for image in candidates[: settings.posts]:
        brand = brands[image.context.account]
        breakdown = truth[image.id]["breakdown"]
        # The drawn creative's log-KPI without its text term, which the judge cannot read.
        drawn = sum(float(value) for value in breakdown.values()) - float(breakdown["text"])
        posts.append(
            HeldOutPost(
                id=image.id,
                context=image.context,
                brand=brand,
                real_image=load_image(image.media, resolution),
                real_description=image.description,
                recorded_log_kpi=math.log(brand.kpi_scale) + drawn,
            )
        )
    return posts


def _resolution(model: Path) -> int:
    return int(json.loads((model / "vae" / "config.json").read_text())["sample_size"])


def run_evaluation(
    paths: llm_recipe.LlmPaths,
    settings: EvalSdSettings = EvalSdSettings(),
    *,
    run_dir: Path | None = None,
) -> Path:
    """Evaluate the LoRA of a DDPO run folder (default: the one `make train-sd` trains) with
    the curve of its snapshots, and write the report; returns the HTML path."""
    model = default_world_sd_dir()
    if not (model / "model_index.json").is_file():
        raise SystemExit(f"no world SD at {model}: run `make models` first")
    run_dir = run_dir or boigsd_recipe.run_dir(paths, BoigsdJob(), model)
    lora = run_dir / LORA_DIR
    if not (lora / LORA_WEIGHTS_FILE).is_file():
        raise SystemExit(f"no BoigSD LoRA in {run_dir}: run `make train-sd` first")
    # Captions are counted by the model's own tokenizer, as its generator would count them.
    data = world_sd_recipe.world_sd_data(paths, model / "tokenizer")
    console.print("eval-sd: preparing the judge's detector (once, ~6 min)")
    judge_weights = judge_detector(paths.home)
    sft = None
    if settings.sft:
        console.print(f"eval-sd: SFT baseline ({SFT_STEPS} UNet steps on high-KPI creatives, once)")
        sft = sft_pipeline(paths, model, data)
    posts = held_out_posts(paths, model, data, settings)
    # The training split's history: prompts for future posts must not know them.
    env = boigsd_recipe.describer_env(paths, data.dataset)
    stack_dir = paths.home / "stack" / "eval-sd"
    with (
        local_stack(
            stack_dir / "training", services=("featurizer", "describer", "scorer"), extra_env=env
        ) as stack,
        local_stack(
            stack_dir / "judge",
            services=("featurizer",),
            extra_env={"BOIG_FEATURIZER_DETECTOR_WEIGHTS": str(judge_weights)},
        ) as judge_stack,
    ):
        evaluation = asyncio.run(
            _evaluate(
                posts,
                settings,
                model=model,
                sft=sft,
                lora=lora,
                run_dir=run_dir,
                describer_url=stack.url("describer"),
                scorer_url=stack.url("scorer"),
                judge_url=judge_stack.url("featurizer"),
            )
        )
    report.print_report(evaluation, console)
    stem = paths.reports / f"boigsd-efficacy-{run_dir.name}"
    html_path = report.write_html(evaluation, stem.with_suffix(".html"))
    json_path = report.write_json(evaluation, stem.with_suffix(".json"))
    console.print(f"HTML report: {html_path}\nresults as JSON: {json_path}")
    return html_path


@dataclass(frozen=True)
class RunReward:
    """The reward a DDPO run trained on: ``(weight, scorer reward)`` terms."""

    terms: tuple[tuple[float, RewardName], ...]

    @classmethod
    def of(cls, job: BoigsdJob) -> RunReward:
        if not job.faithfulness:
            return cls(((1.0, job.reward),))
        return cls(((1.0 - job.faithfulness, job.reward), (job.faithfulness, "match")))

    def __str__(self) -> str:
        return " + ".join(f"{weight:g} x {name}" for weight, name in self.terms)


def post_seeds(posts: int, samples: int, seed: int) -> list[list[int]]:
    """Seeds per (post, image): every post its own noise, the same for every method (the
    comparison stays paired), so the intervals over posts also cover the draw of noise."""
    return [[seed * 10_000_000 + 1_000 * i + j for j in range(samples)] for i in range(posts)]


async def _evaluate(
    posts: list[HeldOutPost],
    settings: EvalSdSettings,
    *,
    model: Path,
    sft: Path | None,
    lora: Path,
    run_dir: Path,
    describer_url: str,
    scorer_url: str,
    judge_url: str,
) -> SdEfficacy:
    job = read_job(run_dir) or BoigsdJob()
    trained = config_for(job, model)
    reward = RunReward.of(job)
    recommended = read_sampling_defaults(model)
    # Every method is drawn as the generator serves (the pipeline's DDIM, eta 0), at the
    # guidance the run trained with.
    sampling = Sampling(
        samples_per_caption=settings.samples,
        steps=recommended.steps or Sampling.steps,
        guidance_scale=trained.guidance_scale,
        seed=settings.seed,
    )
    draws = max(settings.samples, settings.best_of)
    seeds = post_seeds(len(posts), draws, settings.seed)
    resolution = _resolution(model)
    count = token_counter(load_or_build_tokenizer(model / "tokenizer"))
    target = KpiTarget(level=KpiLevel.HIGH)
    async with (
        DescriberClient(describer_url, timeout=900) as describer,
        ScorerClient(scorer_url, timeout=900) as scorer,
        FeaturizerClient(judge_url, timeout=300) as judge_client,
    ):
        judge_featurizer = await HttpFeaturizer.connect(judge_client)
        console.print(f"eval-sd: BoigLLM's high-KPI descriptions for {len(posts)} contexts")
        gate = asyncio.Semaphore(4)

        async def high(context: Context) -> Verbalization:
            async with gate:
                answer = await call_with_retries(
                    lambda: describer.describe(context, target), retries=20, what="describer"
                )
            return answer.verbalization

        asked_high = list(await asyncio.gather(*(high(post.context) for post in posts)))
        asked_real = [post.real_description for post in posts]
        high_prompts = [
            render_prompt(d, p.context, count_tokens=count)
            for d, p in zip(asked_high, posts, strict=True)
        ]
        real_prompts = [
            render_prompt(d, p.context, count_tokens=count)
            for d, p in zip(asked_real, posts, strict=True)
        ]

        async def judge(images: list[Image.Image]) -> list[Verbalization]:
            return await judge_featurizer.featurize_images(images, batch_size=JUDGE_BATCH)

        async def score(context: Context, pngs: list[bytes], name: RewardName) -> list[float]:
            request = ScoreRequest(
                context=context,
                target=target,
                reward=name,
                creatives=[Creative(id=f"i{i}", data=b) for i, b in enumerate(pngs)],
            )
            response = await call_with_retries(
                lambda: scorer.score(request), retries=10, what="scorer"
            )
            totals = {result.id: result.total for result in response.results}
            return [totals[f"i{i}"] for i in range(len(pngs))]

        async def reward_of(context: Context, images: list[Image.Image]) -> list[float]:
            pngs = [encode_png(image) for image in images]
            parts = [(w, await score(context, pngs, name)) for w, name in reward.terms]
            return [sum(w * values[i] for w, values in parts) for i in range(len(images))]

        async def judged(method: MethodImages) -> JudgedMethod:
            console.print(f"eval-sd: judging {method.name}")
            return await efficacy.judge_method(method, posts, judge, reward_of)

        def draw(
            name: str,
            pipeline: Any,
            prompts: list[str],
            asked: list[Verbalization],
            samples: int,
        ) -> MethodImages:
            console.print(f"eval-sd: drawing {name} ({len(prompts)} posts x {samples})")
            per_post = dataclasses.replace(sampling, samples_per_caption=samples)
            images = sample_captions(pipeline, prompts, per_post, resolution, seeds=seeds)
            return MethodImages(name, images, list(asked))

        methods: list[JudgedMethod] = [
            await judged(MethodImages(REAL, [[p.real_image] for p in posts], [None] * len(posts)))
        ]
        base_pipeline = load_sampler(model)
        methods.append(
            await judged(draw(BASE, base_pipeline, real_prompts, asked_real, settings.samples))
        )
        # Prompt-only draws N images for best-of-N; its own row reads the first `samples`.
        prompt_only = await judged(
            draw(PROMPT_ONLY, base_pipeline, high_prompts, asked_high, draws)
        )
        methods.append(efficacy.first_draws(prompt_only, settings.samples))
        methods.append(efficacy.best_of_n(prompt_only, settings.best_of))
        if sft is not None:
            sft_sampler = load_sampler(sft)
            methods.append(
                await judged(draw(SFT, sft_sampler, high_prompts, asked_high, settings.samples))
            )
        boigsd_pipeline = load_sampler(model)
        load_boigsd_lora(boigsd_pipeline, lora)
        boigsd = await judged(
            draw(BOIGSD, boigsd_pipeline, high_prompts, asked_high, settings.samples)
        )
        methods.append(boigsd)

        base = methods[1]
        curve = []
        published = _published_epoch(run_dir, lora)
        evaluations = {row["epoch"]: row["reward_mean"] for row in read_evaluation(run_dir)}
        for epoch, folder in _curve_snapshots(snapshots(run_dir), published):
            if epoch == published:
                point = boigsd  # the table's own BoigSD row: one number per epoch
            else:
                snapshot = load_sampler(model)
                load_boigsd_lora(snapshot, folder)
                name = f"BoigSD epoch {epoch}"
                point = await judged(
                    draw(name, snapshot, high_prompts, asked_high, settings.curve_samples)
                )
            curve.append(efficacy.curve_point(epoch, point, base, evaluations.get(epoch)))

    table = efficacy.efficacy_table(methods, posts)
    meta = {
        "held-out posts": f"{len(posts)} of the test split (future), brands "
        + ", ".join(sorted({p.brand.account for p in posts})),
        "images": f"{settings.samples} per post and method, each post its own seeds shared by "
        f"every method (best-of-N: the best of {settings.best_of}; the curve's earlier epochs: "
        f"{settings.curve_samples})",
        "sampling": f"as served: the pipeline's DDIM (eta 0), {sampling.steps} steps, guidance "
        f"{sampling.guidance_scale:g}; DDPO trained on DDIM eta {trained.eta:g}, "
        f"{trained.sample_steps} steps, and early-stopped on eta {trained.eval_eta:g}, "
        f"{trained.eval_steps or trained.sample_steps} steps",
        "prompts": "BoigLLM's high-KPI description, with the training split's history only "
        "(no held-out post); base: the real post's own description",
        "training reward": f"scorer {reward} at target high (the run's)",
        "BoigSD LoRA": f"{lora} (epoch {published})" if published is not None else str(lora),
        "SFT": str(sft) if sft is not None else "not evaluated",
        "judge": f"featurizer {judge_featurizer.version}; detector seed "
        f"{JUDGE_DETECTOR_SEED}, width {JUDGE_DETECTOR_WIDTH}",
    }
    return SdEfficacy(
        posts=posts,
        methods=methods,
        table=table,
        calibration=efficacy.judge_calibration(methods[0], posts),
        curve=curve,
        published_epoch=published,
        meta=meta,
    )


def _curve_snapshots(
    found: list[tuple[int, Path]], published: int | None, most: int = CURVE_POINTS
) -> list[tuple[int, Path]]:
    """At most ``most`` snapshots, evenly spread, always the first, the last and the
    published one: enough for the curve's shape at a bounded cost."""
    if len(found) <= most:
        return found
    picks = {round(i * (len(found) - 1) / (most - 1)) for i in range(most)}
    picks |= {i for i, (epoch, _) in enumerate(found) if epoch == published}
    return [found[i] for i in sorted(picks)]


def _published_epoch(run_dir: Path, lora: Path) -> int | None:
    """The snapshot whose weights the run's LoRA holds (byte-equal file): early stopping's
    pick; None for a run without evaluations."""
    published = (lora / LORA_WEIGHTS_FILE).read_bytes()
    for epoch, folder in snapshots(run_dir):
        if (folder / LORA_WEIGHTS_FILE).read_bytes() == published:
            return epoch
    return None
