"""Load and fuzz the whole stack on loopback, bounded in time, and print what was measured.

Run: ``python tests/soak/soak.py`` (``make soak``; ``--help`` for the knobs). The five
services start as processes (the tiny random SD for the generator); then
1. load: ``--clients`` concurrent clients on ``POST /v1/score`` for ``--seconds``, cached and
   fresh briefs mixed, with the per-key rate limit raised so the services are measured;
   statuses, latency of the 200s, RSS of every service before and after, and the
   describer's pending work against its cap;
2. the rate limit itself: a second gateway on the same database with a limit of 5/minute;
3. fuzz: schemathesis on the gateway's /openapi.json, with a valid key and without one;
then ``GET /health``. Exits 1 when an answer was neither a 200 nor a designed, typed refusal
(load), on any 5xx but a typed 503, untyped error or unauthenticated success (fuzz), or when
the gateway is not healthy after; the logs are then kept and their path printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script

from services.demo.__main__ import SAMPLES, create_api_key
from services.describer.settings import DescriberSettings
from services.tooling.models import prepare_all
from services.tooling.stack import LocalStack, local_stack
from tests.soak import fuzz_gateway, load_score

LOAD_RATE_LIMIT = "100000/minute"
LOW_RATE_LIMIT = "5/minute"
# Generation jobs the fuzz gets accepted must stay cheap for the 2-core worker: beyond
# these the gateway answers 422, which the fuzz sees too.
CHEAP_GENERATION = {
    "BOIG_GENERATION_MAX_CANDIDATES": "2",
    "BOIG_GENERATION_MAX_SIDE": "64",
    "BOIG_GENERATION_MAX_STEPS": "2",
}
CREATIVE_PATH = SAMPLES / "gold-star.png"


def rss_table(stack: LocalStack) -> dict[str, int]:
    """Resident memory of each service: its process and any children (Celery's pool)."""
    sizes = {}
    for name, process in stack.processes.items():
        try:
            root = psutil.Process(process.pid)
            tree = [root, *root.children(recursive=True)]
            sizes[name] = sum(p.memory_info().rss for p in tree if p.is_running())
        except psutil.NoSuchProcess:
            sizes[name] = 0
    return sizes


def print_rss(before: dict[str, int], after: dict[str, int], label: str) -> None:
    print(f"RSS per service ({label}):")
    for name in before:
        delta = (after[name] - before[name]) / 2**20
        print(
            f"  {name:<11} {before[name] / 2**20:8.1f} MiB -> {after[name] / 2**20:8.1f} MiB"
            f"  ({delta:+.1f})"
        )


def print_log_lines(stack: LocalStack, request_id: str, limit: int = 12) -> None:
    """Each service's warnings and errors for one request, with any traceback under them."""
    for name in stack.processes:
        shown: list[str] = []
        following = False
        for line in stack.log(name).splitlines():
            starts_entry = line[:4].isdigit()  # log lines start with the date
            if starts_entry:
                following = request_id in line and (" ERROR " in line or " WARNING " in line)
            if following and len(shown) < limit:
                shown.append(line)
        if shown:
            print(f"    [{name}.log] " + "\n      ".join(shown))


def report_unexpected(stack: LocalStack, unexpected: list[load_score.Outcome]) -> None:
    """One example of each kind of unexpected answer, with what the services logged."""
    seen: set[tuple[int, str | None, str]] = set()
    for outcome in unexpected:
        kind = (outcome.status, outcome.error_type, (outcome.message or "")[:40])
        if kind in seen:
            continue
        seen.add(kind)
        count = sum(
            1 for o in unexpected if (o.status, o.error_type, (o.message or "")[:40]) == kind
        )
        print(
            f"  UNEXPECTED x{count}: {outcome.status or 'no answer'} {outcome.error_type or ''} "
            f"after {outcome.seconds:.1f} s ({outcome.kind}): {outcome.message or ''}"
        )
        if outcome.request_id:
            print(f"    request id {outcome.request_id}")
            print_log_lines(stack, outcome.request_id)


def rate_limit_phase(stack: LocalStack, headers: dict[str, str]) -> tuple[list[str], bool]:
    """A second gateway, same database and upstreams, limit 5/minute: 8 cached describes."""
    # The main stack's wiring without its ports: local_stack picks the new gateway's own.
    env = {k: v for k, v in stack.environment().items() if not k.endswith("_PORT")}
    env["BOIG_GATEWAY_RATE_LIMIT"] = LOW_RATE_LIMIT
    body = {"context": load_score.CACHED_REQUEST["context"], "target": {"level": "high"}}
    statuses = []
    with local_stack(stack.run_dir / "limited", services=("gateway",), extra_env=env) as limited:
        for _ in range(8):
            response = httpx.post(
                f"{limited.url('gateway')}/v1/describe", headers=headers, json=body, timeout=120
            )
            error_type, _ = (
                load_score.typed_error(response) if response.status_code != 200 else (None, None)
            )
            after = response.headers.get("retry-after")
            statuses.append(
                f"{response.status_code}"
                + (f" {error_type} (Retry-After {after})" if error_type else "")
            )
    refused = [s for s in statuses if s.startswith("429 rate_limited (Retry-After ")]
    good = statuses[:5] == ["200"] * 5 and len(refused) == 3 and "None" not in "".join(refused)
    return statuses, good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--fresh-share", type=float, default=0.3, help="share of requests with a new brief"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=75.0, help="seconds the last requests may finish"
    )
    parser.add_argument("--max-examples", type=int, default=25, help="per route and data mode")
    parser.add_argument(
        "--fuzz-budget", type=float, default=80.0, help="seconds per fuzz run, at most"
    )
    args = parser.parse_args()

    models = prepare_all(world_sd=False, boigllm=False, log=False)
    run_dir = Path(tempfile.mkdtemp(prefix="boig-soak-"))
    extra_env = {
        "BOIG_GENERATOR_MODEL_PATH": str(models["tiny-diffusion"]),
        "BOIG_GATEWAY_RATE_LIMIT": LOAD_RATE_LIMIT,
        **CHEAP_GENERATION,
    }
    creative = (CREATIVE_PATH.name, CREATIVE_PATH.read_bytes())
    failures: list[str] = []
    started = time.monotonic()
    with local_stack(run_dir, extra_env=extra_env) as stack:
        print(f"stack up in {time.monotonic() - started:.0f} s; logs in {run_dir}")
        key = create_api_key(stack.database_url)
        headers = {"Authorization": f"Bearer {key}"}
        gateway, describer = stack.url("gateway"), stack.url("describer")
        max_pending = DescriberSettings().max_pending_requests

        warm = asyncio.run(load_score.warm_cached_brief(gateway, headers, creative))
        print(f"cached brief warmed in {warm:.1f} s")
        before = rss_table(stack)
        result = asyncio.run(
            load_score.run_load(
                gateway_url=gateway,
                describer_url=describer,
                headers=headers,
                creative=creative,
                clients=args.clients,
                seconds=args.seconds,
                fresh_share=args.fresh_share,
                drain_timeout=args.drain_timeout,
            )
        )
        after_load = rss_table(stack)
        print(f"\n== load: POST /v1/score, rate limit {LOAD_RATE_LIMIT} per key ==")
        print("\n".join(load_score.summarize(result, max_pending=max_pending)))
        print_rss(before, after_load, "before and after the load")
        unexpected = result.unexpected()
        report_unexpected(stack, unexpected)
        if unexpected:
            failures.append(
                f"load: {len(unexpected)} requests got neither a 200 nor a typed 429/503 "
                f"(or no answer {args.drain_timeout:.0f} s after the load ended)"
            )
        if any(n > max_pending for n in [*result.pending_at_refusal()]):
            failures.append("load: the describer reported more pending work than its cap")
        # Work whose callers are gone still runs (it fills the cache), so the fuzz below
        # meets a describer that may be busy for minutes: its /v1/describe cases see that.
        left = load_score.describer_pending_estimate(httpx.get(f"{describer}/metrics").text)
        print(f"describer computations pending after the load: {left}")

        print(f"\n== rate limit: a gateway at {LOW_RATE_LIMIT}, 8 cached POST /v1/describe ==")
        statuses, good = rate_limit_phase(stack, headers)
        print("  " + ", ".join(statuses))
        if not good:
            failures.append("rate limit: not 5 x 200 then 429 rate_limited with Retry-After")

        print(f"\n== fuzz: schemathesis, {args.max_examples} examples per route and mode ==")
        for run, run_headers in (("with a valid key", headers), ("without a key", None)):
            fuzzed = fuzz_gateway.fuzz(
                run=run,
                base_url=gateway,
                headers=run_headers,
                max_examples=args.max_examples,
                budget_seconds=args.fuzz_budget,
            )
            print("\n".join(fuzz_gateway.summarize(fuzzed)))
            for request_id in {f.request_id for f in fuzzed.gating() if f.request_id}:
                print_log_lines(stack, request_id)
            if fuzzed.gating():
                failures.append(f"fuzz {run}: {len(fuzzed.gating())} findings")

        health = httpx.get(f"{gateway}/health", timeout=10)
        print(f"\nGET /health after: {health.status_code} {health.text}")
        if health.status_code != 200 or health.json().get("status") != "ok":
            failures.append("the gateway is not healthy after the soak")
        print_rss(before, rss_table(stack), "before the load and at the end")
    print(f"\nsoak took {time.monotonic() - started:.0f} s")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures) + f"\nlogs kept in {run_dir}")
        return 1
    shutil.rmtree(run_dir, ignore_errors=True)
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
