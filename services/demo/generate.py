"""The demo's generation step: submit a job, follow it with a progress bar, write a page.

Everything goes through the public API a marketing app uses: ``POST /v1/generate``, polling
``GET /v1/jobs/{id}``, and ``GET /v1/images/{id}`` for each PNG.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


def submit(base_url: str, key: str, request: dict[str, Any]) -> str:
    response = httpx.post(
        f"{base_url}/v1/generate",
        json=request,
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"demo-{time.time_ns()}"},
        timeout=30,
    )
    if response.status_code != 202:
        raise RuntimeError(f"/v1/generate answered {response.status_code}: {response.text}")
    job_id: str = response.json()["job_id"]
    return job_id


def follow(
    base_url: str, key: str, job_id: str, console: Console, timeout: float = 900
) -> dict[str, Any]:
    """Poll the job until it ends, drawing its stage and denoising steps as a progress bar."""
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("queued", total=None)
        while time.monotonic() < deadline:
            status: dict[str, Any] = httpx.get(
                f"{base_url}/v1/jobs/{job_id}", headers=headers, timeout=30
            ).json()
            state = status["state"]
            if state in TERMINAL:
                total = progress.tasks[0].total or 1
                progress.update(bar, description=state, completed=total, total=total)
                return status
            if state == "queued":
                progress.update(bar, description=f"queued (position {status['queue_position']})")
            elif status["progress"] is not None:
                step = status["progress"]
                eta = step["eta_seconds"]
                label = step["stage"] + (f", ~{eta:.0f} s left" if eta else "")
                progress.update(bar, description=label, completed=step["step"], total=step["total"])
            time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s")


def write_gallery(base_url: str, key: str, status: dict[str, Any], out_dir: Path) -> Path:
    """Download the job's images and write ``index.html`` showing them with their rewards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {key}"}
    cards = []
    for image in status["images"]:
        data = httpx.get(f"{base_url}{image['url']}", headers=headers, timeout=30).content
        name = f"rank{image['rank']}-seed{image['seed']}.png"
        (out_dir / name).write_bytes(data)
        breakdown = "".join(
            f"<li>{html.escape(part)}: {value:.3f}</li>"
            for part, value in image["breakdown"].items()
        )
        reward = "n/a" if image["reward"] is None else f"{image['reward']:.3f}"
        cards.append(
            f'<figure><img src="{name}" alt="rank {image["rank"]}">'
            f"<figcaption><b>#{image['rank']}</b> reward {reward}"
            f"<ul>{breakdown}</ul></figcaption></figure>"
        )
    outcome = status["outcome"] or {}
    request = status["request"]
    facts = {
        "context": json.dumps(request["context"]),
        "target": f"{request['target']['name']} = {request['target']['level']}",
        "strategy": outcome.get("strategy", ""),
        "target description (BoigLLM)": outcome.get("target_description") or "",
        "prompt": outcome.get("prompt", ""),
        "negative prompt": outcome.get("negative_prompt") or "",
        "models": ", ".join(
            f"{name} {info['version']}" for name, info in outcome.get("models", {}).items()
        ),
        "notes": "; ".join(outcome.get("notes", [])),
    }
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td><pre>{html.escape(str(v))}</pre></td></tr>"
        for k, v in facts.items()
        if v
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>BOIG generation {status["job_id"]}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; }}
figure {{ display: inline-block; margin: 0 1rem 1rem 0; vertical-align: top; }}
img {{ width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }}
th {{ text-align: left; vertical-align: top; padding-right: 1rem; }}
pre {{ white-space: pre-wrap; margin: 0; }}
</style></head><body>
<h1>Generated for {html.escape(facts["target"])}</h1>
<p>Job {status["job_id"]}: {status["state"]}, best first.</p>
{"".join(cards)}
<table>{rows}</table>
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page)
    return index
