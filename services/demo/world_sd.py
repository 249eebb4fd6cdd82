"""The demo's last step: what the served world SD draws for descriptions of real creatives of
the synthetic world (one per brand, high KPI), next to the creatives themselves.

The generation job before it is prompted by the describer's brief, which on the base SmolLM2
names things the world never shows (people, cups); here the prompts are the generator's own
rendering of the featurized descriptions, the kind of prompt the world SD was trained on.
"""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from services.common.image_prompts import render_prompt
from services.common.images import png_data_uri
from services.common.verbalization import parse
from services.generator.pipeline import ImagePipeline, ImageRequest
from services.generator.settings import FALLBACK_GUIDANCE, FALLBACK_STEPS
from services.trainer.finetune.data import load_examples
from services.trainer.ingest.dataset import Direction, InstructionExample

SAMPLES_PER_PROMPT = 3
SEED = 7


def _png_uri(image: Image.Image, size: int = 128) -> str:
    return png_data_uri(image.convert("RGB").resize((size, size), Image.Resampling.NEAREST))


def show_world_sd(
    model_path: Path, dataset_dir: Path, media_dir: Path, out_dir: Path, console: Console
) -> Path:
    """Draw ``SAMPLES_PER_PROMPT`` images for one high-KPI creative of each brand in the
    ingested sample; print the prompts and write ``world-sd.html`` beside the job's page."""
    examples = [
        example
        for split in ("train", "test")
        for example in load_examples(dataset_dir, split)[Direction.CONTENT]
    ]
    chosen: dict[str, InstructionExample] = {}
    for example in sorted(examples, key=lambda e: -e.percentile):
        chosen.setdefault(example.context.account, example)
    pipeline = ImagePipeline(model_path)
    width, height = pipeline.native_size
    guidance = pipeline.sampling.guidance_scale
    steps = pipeline.sampling.steps or FALLBACK_STEPS
    table = Table(title=f"world SD ({width}x{height}): prompts from real creatives' descriptions")
    table.add_column("account")
    table.add_column("prompt")
    rows = []
    for account, example in chosen.items():
        description = parse(example.verbalization)
        prompt = render_prompt(
            description, example.context, count_tokens=pipeline.count_prompt_tokens
        )
        images = pipeline.generate(
            ImageRequest(
                prompt=prompt,
                negative_prompt=None,
                width=width,
                height=height,
                steps=steps,
                guidance_scale=FALLBACK_GUIDANCE if guidance is None else guidance,
                seed=SEED,
                count=SAMPLES_PER_PROMPT,
            )
        )
        with Image.open(media_dir / f"{example.id}.png") as real:
            real_uri = _png_uri(real)
        table.add_row(account, prompt)
        generated = "".join(f'<img src="{_png_uri(image)}" alt="generated">' for image in images)
        rows.append(
            f'<tr><td>{html.escape(account)}</td><td><img src="{real_uri}" alt="real"></td>'
            f"<td>{generated}</td><td>{html.escape(prompt)}</td></tr>"
        )
    console.print(table)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>world SD: prompt -> image</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 80rem; }}
img {{ width: 128px; height: 128px; image-rendering: pixelated; margin: 2px; }}
td {{ vertical-align: top; padding: 4px 8px; border-bottom: 1px solid #ddd; }}
</style></head><body>
<h1>What the world SD draws for a real creative's description</h1>
<p>Model {html.escape(str(model_path))}: guidance {guidance}, {steps} DDIM steps, seed {SEED}.
Each row: a high-KPI creative of the demo's world sample, and what the model draws for the
prompt the generator writes from that creative's featurized description.</p>
<table><tr><th>account</th><th>real creative</th><th>world SD</th><th>prompt</th></tr>
{"".join(rows)}</table></body></html>
"""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "world-sd.html"
    path.write_text(page, encoding="utf-8")
    return path
