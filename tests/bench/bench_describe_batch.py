"""Describer throughput with micro-batching vs one request at a time, in the same run.

Run: ``python tests/bench/bench_describe_batch.py [--rows N] [--batch B] [--threads T]``.
The describer serves the registry's current BoigLLM (the base model if none is published)
with the accounts' history, and describes N distinct (context, level) requests sent all at
once: first with ``describe_batch_size=1`` (each request decoded alone, reusing its KV cache
between lines), then with ``describe_batch_size=B``, both with greedy colours lines. It prints
descriptions per second of each, the ratio, and whether the two gave the same descriptions
(greedy decoding of a left-padded batch can differ from one row alone in the last float bits;
the share that differs is printed, not hidden). Last, batches of B as served, each colours line
the average of ``palette_samples`` sampled ones: what averaging costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script

from services.common.checkpoints import BOIGLLM_CHECKPOINT, current_checkpoint, load_manifest
from services.common.contracts import KPI_LEVELS, Context, KpiTarget
from services.common.settings import boig_home, checkpoint_registry, default_history_path
from services.describer.backends import create_backend
from services.describer.service import Describer
from services.describer.settings import DescriberSettings
from services.tooling.models import prepare_all
from services.trainer.world.brands import DEFAULT_BRANDS

TEXTS = (
    "Our autumn collection is here",
    "Weekend sale: 20% off everything",
    "Meet the team behind the product",
    "New flavours for the summer",
    "Thank you for 10k followers",
    "Behind the scenes at the studio",
)


def requests(rows: int) -> list[tuple[Context, KpiTarget]]:
    """``rows`` distinct requests over the world's brands, texts and levels."""
    out = []
    for index in range(rows):
        brand = DEFAULT_BRANDS[index % len(DEFAULT_BRANDS)]
        text = TEXTS[index // len(DEFAULT_BRANDS) % len(TEXTS)]
        level = KPI_LEVELS[index % len(KPI_LEVELS)]
        out.append(
            (Context(account=brand.account, text=f"{text} #{index}"), KpiTarget(level=level))
        )
    return out


async def describe_all(describer: Describer, work: list[tuple[Context, KpiTarget]]) -> list[str]:
    responses = await asyncio.gather(
        *(describer.describe(context=context, target=target) for context, target in work)
    )
    return [response.text for response in responses]


def run(
    batch_size: int, work: list[tuple[Context, KpiTarget]], threads: int, palette_samples: int = 1
) -> tuple[float, list[str]]:
    settings = DescriberSettings(
        describe_batch_size=batch_size,
        torch_threads=threads,
        history_path=default_history_path(),
        cache_size=0,
        palette_samples=palette_samples,
    )
    registry = checkpoint_registry(boig_home())
    checkpoint = current_checkpoint(registry, BOIGLLM_CHECKPOINT)
    if checkpoint is not None:
        load_manifest(checkpoint)  # verified, as the describer does
    describer = Describer(create_backend(settings, checkpoint), settings)
    asyncio.run(describe_all(describer, work[:1]))  # warm-up: first-call allocations
    started = time.perf_counter()
    texts = asyncio.run(describe_all(describer, work))
    return time.perf_counter() - started, texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (eval uses 1)")
    args = parser.parse_args()
    prepare_all(world_sd=False, boigllm=False)
    work = requests(args.rows)
    alone, alone_texts = run(1, work, args.threads)
    batched, batched_texts = run(args.batch, work, args.threads)
    differing = sum(a != b for a, b in zip(alone_texts, batched_texts, strict=True))
    print(f"{args.rows} descriptions, {args.threads} torch thread(s)")
    print(f"  one at a time:      {args.rows / alone:6.2f} descriptions/s ({alone:.1f} s)")
    rate = args.rows / batched
    print(f"  batches of {args.batch:<3d}:     {rate:6.2f} descriptions/s ({batched:.1f} s)")
    print(f"  speed-up: {alone / batched:.2f}x; descriptions that differ: {differing}/{args.rows}")
    samples = DescriberSettings.model_fields["palette_samples"].default
    averaged, _ = run(args.batch, work, args.threads, palette_samples=samples)
    print(
        f"  batches of {args.batch}, colours averaged over {samples} samples (served): "
        f"{args.rows / averaged:6.2f} descriptions/s ({averaged:.1f} s; "
        f"{averaged / batched:.2f}x the greedy batches' time)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
