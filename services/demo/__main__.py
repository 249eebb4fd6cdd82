"""`make demo`: start the local stack, rank the sample creatives and generate new ones.

Everything a marketing app would do, on the embedded default: an API key, a multipart
`POST /v1/score` of the bundled creatives for a context and a KPI target, the answer printed
as a ranking with breakdowns and the target description BoigLLM wrote; then a
`POST /v1/generate` job followed to the end, its images written with an HTML page.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from services.common.checkpoints import BOIGLLM_CHECKPOINT, current_checkpoint
from services.common.settings import boig_home, checkpoint_registry
from services.demo.brand_looks import show_brand_looks
from services.demo.generate import follow, submit, write_gallery
from services.demo.world_sample import ingest_world_sample
from services.demo.world_sd import show_world_sd
from services.generator.settings import GeneratorSettings
from services.tooling.stack import LocalStack, local_stack
from services.trainer.world.generate import MEDIA_DIR

SAMPLES = Path(__file__).resolve().parent / "samples"
OUTPUT = Path(os.environ.get("BOIG_DEMO_OUTPUT", "demo-output"))
console = Console()


def create_api_key(database_url: str) -> str:
    """Create a key the way an operator does: through the gateway's CLI."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.gateway.cli",
            "keys",
            "create",
            "--name",
            "demo",
            "--database-url",
            database_url,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"boig_[A-Za-z0-9_-]+", result.stdout)
    if match is None:
        raise RuntimeError(f"no key in the CLI's output:\n{result.stdout}\n{result.stderr}")
    return match.group(0)


def score_samples(base_url: str, key: str, reward: str) -> dict[str, Any]:
    request = json.loads((SAMPLES / "request.json").read_text())
    request["reward"] = reward
    files = [
        (
            "creatives",
            (path.name, path.read_bytes(), "image/png" if path.suffix == ".png" else "image/jpeg"),
        )
        for path in sorted(SAMPLES.glob("*.*g"))
    ]
    response = httpx.post(
        f"{base_url}/v1/score",
        headers={"Authorization": f"Bearer {key}"},
        data={"request": json.dumps(request)},
        files=files,
        timeout=600,
    )
    if response.status_code != 200:
        raise RuntimeError(f"/v1/score answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


def _summary(verbalization: dict[str, Any]) -> str:
    colors = ", ".join(
        f"{c['name']} {round(c['coverage'] * 100)}%" for c in verbalization["colors"][:3]
    )
    tones = ", ".join(verbalization["tones"])
    objects = ", ".join(o["label"] for o in verbalization["objects"])
    return " | ".join(part for part in (colors, tones, objects) if part)


def show(result: dict[str, Any], elapsed: float) -> None:
    for target in result["targets"]:
        console.print(
            Panel(
                target["text"] or "(empty)",
                title=f"target description: {target['level']} likes",
                expand=False,
            )
        )
    table = Table(
        title=f"reward '{result['reward']}' — weights {result['weights']} — {elapsed:.1f} s"
    )
    table.add_column("rank", justify="right")
    table.add_column("creative")
    table.add_column("total", justify="right")
    table.add_column("breakdown")
    table.add_column("what the featurizer saw")
    for item in result["results"]:
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in item["breakdown"].items())
        table.add_row(
            str(item["rank"]),
            item["id"],
            f"{item['total']:.3f}",
            breakdown,
            _summary(item["verbalization"]),
        )
    console.print(table)


def run_demo(stack: LocalStack, run_dir: Path, checkpoint: str | None) -> None:
    console.rule("1. ingest a sample of the synthetic brand world")
    sample = ingest_world_sample(stack.url("featurizer"), run_dir, console)
    console.rule("2. BoigLLM knows each brand's look")
    show_brand_looks(
        stack.url("describer"), stack.url("featurizer"), sample.version_dir, run_dir, console
    )
    console.rule("3. rank the sample creatives through the public API")
    key = create_api_key(stack.database_url)
    console.print(f"API key created for the demo: {key[:12]}… (stored hashed)")
    count = len(list(SAMPLES.glob("*.*g")))
    result: dict[str, Any] = {}
    for reward in ("match", "contrastive", "likelihood"):
        started = time.perf_counter()
        with console.status(f"scoring {count} creatives with the {reward} reward…"):
            result = score_samples(stack.url("gateway"), key, reward)
        show(result, time.perf_counter() - started)
    console.print(f"models: {json.dumps(result['models'])}")
    generate_images(stack, key)
    console.rule("5. the world SD draws what a description asks for")
    page = show_world_sd(
        GeneratorSettings().model_path,
        sample.version_dir,
        run_dir / "world" / MEDIA_DIR,
        OUTPUT,
        console,
    )
    console.print(f"real creatives and what the world SD drew for their descriptions: {page}")
    if checkpoint is None:
        console.print(
            "The describer here is the base SmolLM2, not fine-tuned on any KPI history, so "
            "these rankings show the machinery, not a brand's learned taste. `make models` "
            "fine-tunes and publishes BoigLLM; the next `make demo` serves it."
        )
    else:
        console.print(
            f"The describer served BoigLLM {checkpoint}, fine-tuned on the synthetic world's "
            "brands and reading each account's ingested history (the sample request's "
            "account, sunbrew, was ingested in step 2, never trained on); `make eval-llm` "
            "measures its descriptions and level predictions against simple baselines."
        )


def generate_images(stack: LocalStack, key: str) -> None:
    console.rule("4. generate creatives for the same target: POST /v1/generate")
    sample = json.loads((SAMPLES / "request.json").read_text())
    request = {
        "context": sample["context"],
        "target": sample["target"],
        "strategy": "best_of_n",
        "count": 4,
        "candidates": 8,
        "seed": 2026,
    }
    started = time.perf_counter()
    job_id = submit(stack.url("gateway"), key, request)
    console.print(f"job {job_id} accepted; following it…")
    status = follow(stack.url("gateway"), key, job_id, console)
    if status["state"] != "succeeded":
        raise RuntimeError(f"generation job ended {status['state']}: {status['error']}")
    table = Table(title=f"generated, best of 8 by reward — {time.perf_counter() - started:.1f} s")
    table.add_column("rank", justify="right")
    table.add_column("seed", justify="right")
    table.add_column("reward", justify="right")
    table.add_column("breakdown")
    for image in status["images"]:
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in image["breakdown"].items())
        table.add_row(str(image["rank"]), str(image["seed"]), f"{image['reward']:.3f}", breakdown)
    console.print(table)
    outcome = status["outcome"]
    console.print(f"prompt: {outcome['prompt']}")
    for note in outcome["notes"]:
        console.print(f"note: {note}")
    index = write_gallery(stack.url("gateway"), key, status, OUTPUT)
    console.print(
        f"images and their page: {index.resolve()} (drawn by the world SD, a 64x64 Stable "
        "Diffusion trained on the synthetic brand world: flat backgrounds, colours and rough "
        "shapes; BOIG_GENERATOR_MODEL_PATH names real SD weights)"
    )


def main() -> None:
    request = json.loads((SAMPLES / "request.json").read_text())
    console.rule("BOIG demo: rank and generate creatives for a KPI target")
    console.print(f"context: {json.dumps(request['context'])}")
    console.print(f"target:  {request['target']['name']} = {request['target']['level']}")
    registry = checkpoint_registry(boig_home())
    current = current_checkpoint(registry, BOIGLLM_CHECKPOINT) if registry.is_dir() else None
    checkpoint = current.version if current is not None else None
    extra_env = {"BOIG_DESCRIBER_CHECKPOINT_REGISTRY": str(registry)} if current else {}
    console.print("starting featurizer, describer, scorer, generator and gateway on loopback…")
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="boig-demo-") as run_dir,
        local_stack(Path(run_dir), extra_env=extra_env) as stack,
    ):
        console.print(
            f"services healthy in {time.perf_counter() - started:.1f} s "
            f"(gateway at {stack.url('gateway')}; describer: "
            f"{f'BoigLLM {checkpoint}' if checkpoint else 'base SmolLM2'})"
        )
        try:
            run_demo(stack, Path(run_dir), checkpoint)
        except Exception:
            for name in stack.processes:
                console.print(f"--- {name} log (tail) ---\n{stack.log(name)[-2000:]}")
            raise


if __name__ == "__main__":
    main()
