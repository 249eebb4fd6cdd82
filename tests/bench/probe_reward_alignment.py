"""Probe: does each scorer reward rank a prompt's sibling images as the hidden true KPI does?

DDPO's advantages compare siblings of one prompt, so only a reward whose within-prompt ranking
agrees with the true KPI can raise it. This draws K images per training context as the `cpu`
DDPO preset does (DDIM eta 1), scores them with each reward through a scorer on loopback,
judges their true log-KPI with eval-sd's independent judge (its own detector), and prints the
within-prompt Spearman, the pooled Pearson, the best-of-K gain and the seconds per reward.

    .venv/bin/python tests/bench/probe_reward_alignment.py [CONTEXTS=8] [K=8] [REWARDS]

Needs what `make eval-sd` needs (world SD, BoigLLM in the registry; the judge's detector is
trained once). About 4 minutes on 2 cores for 8 x 8 images, most of it the likelihood reward.
"""

import asyncio
import sys
import time

import numpy as np
from PIL import Image
from scipy.stats import pearsonr, spearmanr

from services.common.clients import FeaturizerClient
from services.common.settings import default_world_sd_dir
from services.tooling import boigsd_eval_recipe as R
from services.tooling import boigsd_recipe, llm_recipe
from services.tooling.stack import local_stack
from services.trainer.ddpo.job import BoigsdJob, _tasks, config_for, load_pipeline
from services.trainer.ddpo.rewards import ScorerReward
from services.trainer.ddpo.sampling import sample_trajectories
from services.trainer.ddpo.tasks import training_contexts
from services.trainer.evaluate.sd.measure import measure
from services.trainer.ingest.featurize import HttpFeaturizer
from services.trainer.world.brands import DEFAULT_BRANDS
from services.trainer.world.ground_truth import log_kpi_breakdown

N_CTX = int(sys.argv[1]) if len(sys.argv) > 1 else 8
K = int(sys.argv[2]) if len(sys.argv) > 2 else 8
REWARDS = sys.argv[3].split(",") if len(sys.argv) > 3 else ["match", "contrastive", "likelihood"]

paths = llm_recipe.default_paths(0)
model = default_world_sd_dir()
job = BoigsdJob()
config = config_for(job, model)
posts = llm_recipe.ensure_world(paths)
folder = boigsd_recipe.run_dir(paths, job, model)
dataset = llm_recipe.ensure_dataset(paths, posts, folder)
judge_weights = R.judge_detector(paths.home)
brands = {b.account: b for b in DEFAULT_BRANDS}
env = boigsd_recipe.describer_env(paths, dataset)
with (
    local_stack(
        paths.home / "stack" / "probe",
        services=("featurizer", "describer", "scorer"),
        extra_env=env,
    ) as stack,
    local_stack(
        paths.home / "stack" / "probe-judge",
        services=("featurizer",),
        extra_env={"BOIG_FEATURIZER_DETECTOR_WEIGHTS": str(judge_weights)},
    ) as judge_stack,
):
    t0 = time.time()
    contexts = training_contexts(dataset, limit=N_CTX, seed=7)
    tasks = asyncio.run(_tasks(stack.url("describer"), contexts))
    print(f"briefs {time.time() - t0:.1f}s", flush=True)
    pipe = load_pipeline(model, "cpu")
    t0 = time.time()
    batches = []
    for i, task in enumerate(tasks):
        traj = sample_trajectories(
            pipe,
            [task.prompt] * K,
            steps=config.sample_steps,
            eta=config.eta,
            guidance_scale=config.guidance_scale,
            width=config.resolution,
            height=config.resolution,
            seeds=[1000 * i + j for j in range(K)],
        )
        batches.append(traj.images)
    print(f"sampling {time.time() - t0:.1f}s for {N_CTX * K} images", flush=True)
    scores = {}
    for name in REWARDS:
        reward = ScorerReward(stack.url("scorer"), reward=name)
        t0 = time.time()
        futs = [reward.submit(b, [t] * K) for b, t in zip(batches, tasks, strict=True)]
        scores[name] = np.stack([f.result() for f in futs])
        reward.close()
        print(f"reward {name}: {time.time() - t0:.1f}s", flush=True)

    async def judge_all():
        async with FeaturizerClient(judge_stack.url("featurizer"), timeout=300) as c:
            hf = await HttpFeaturizer.connect(c)
            out = []
            for b in batches:
                imgs = [
                    Image.fromarray(
                        (x.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")
                    )
                    for x in b
                ]
                out.append((imgs, await hf.featurize_images(imgs, batch_size=32)))
            return out

    judged = asyncio.run(judge_all())
    parts = {k: np.zeros((N_CTX, K)) for k in ("palette", "tones", "objects", "total")}
    for i, (task, (imgs, found)) in enumerate(zip(tasks, judged, strict=True)):
        brand = brands[task.context.account]
        for j, (im, d) in enumerate(zip(imgs, found, strict=True)):
            br = log_kpi_breakdown(measure(im, d.objects), brand, task.context.posted_at)
            parts["palette"][i, j] = br.palette
            parts["tones"][i, j] = br.tones
            parts["objects"][i, j] = br.objects
            parts["total"][i, j] = br.taste
    truth = parts["total"]
    within, between = truth.std(1).mean(), truth.mean(1).std()
    print(f"\ntrue log-KPI (taste): within-prompt std {within:.3f}, between {between:.3f}")
    for k in ("palette", "tones", "objects"):
        within, between = parts[k].std(1).mean(), parts[k].mean(1).std()
        print(f"  {k}: within std {within:.3f}, between std {between:.3f}")
    for name, s in scores.items():
        rhos = [spearmanr(s[i], truth[i]).statistic for i in range(N_CTX) if s[i].std() > 0]
        best = truth[np.arange(N_CTX), s.argmax(1)].mean() - truth.mean()
        pooled = pearsonr(s.ravel(), truth.ravel()).statistic
        print(
            f"{name:12s} within-prompt spearman mean {np.nanmean(rhos):+.3f} "
            f"(median {np.nanmedian(rhos):+.3f}); pooled pearson {pooled:+.3f}; "
            f"within std {s.std(1).mean():.4f}; best-of-{K} gain in true log-KPI {best:+.3f}"
        )
        for k in ("palette", "tones", "objects"):
            r = [
                spearmanr(s[i], parts[k][i]).statistic
                for i in range(N_CTX)
                if s[i].std() > 0 and parts[k][i].std() > 0
            ]
            print(f"     vs {k}: within spearman {np.nanmean(r):+.3f}")
    oracle = truth.max(1).mean() - truth.mean()
    print(f"oracle best-of-{K} gain {oracle:+.3f}")
    np.savez(
        paths.reports / "reward-alignment.npz",
        truth=truth,
        **{f"r_{k}": v for k, v in scores.items()},
        **{f"p_{k}": v for k, v in parts.items()},
    )
