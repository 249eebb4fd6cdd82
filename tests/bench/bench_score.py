"""`POST /v1/score` of 16 creatives end to end vs the sum of its in-process component times.

Run: ``python tests/bench/bench_score.py [--rounds N]``. In the fresh-brief scenario each
round uses a new context so the describer really generates (its cache would otherwise hide
the model). Each round runs the components in this process (decode, featurize, describe,
reward) and the same work through gateway -> scorer -> featurizer + describer as processes
on loopback, one after the other. The goal is HTTP/service overhead <= 30% over the
component sum.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script

from services.common.contracts import Context, Creative, KpiTarget
from services.common.images import decode_image
from services.common.settings import ImageLimits
from services.demo.__main__ import SAMPLES, create_api_key
from services.describer.backends import create_backend
from services.describer.service import Describer
from services.describer.settings import DescriberSettings
from services.featurizer.backends import load_detector
from services.featurizer.service import Featurizer
from services.featurizer.settings import FeaturizerSettings
from services.scorer.rewards import match_rewards
from services.scorer.settings import ScorerSettings
from services.tooling.models import prepare_all
from services.tooling.stack import local_stack

GOAL_OVERHEAD = 0.30
CREATIVES = 16


def creatives() -> list[dict[str, str]]:
    """16 distinct creatives: the samples, then mirrored and rotated copies of them."""
    base = [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.*g"))]
    variants = [lambda im: im, ImageOps.mirror, lambda im: im.rotate(90, expand=True)]
    out = []
    for index in range(CREATIVES):
        image = variants[index // len(base) % len(variants)](base[index % len(base)])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(
            {"id": f"c{index}", "image_base64": base64.b64encode(buffer.getvalue()).decode()}
        )
    return out


def context(tag: str) -> Context:
    return Context(
        account=f"bench{tag}", text=f"Autumn sale {tag}: boots and scarves", keywords=["sale"]
    )


SCENARIOS = {
    # A new context every round: the describer generates, which dominates the latency.
    "fresh brief": True,
    # The same context every round: the describer answers from its cache, so what is left
    # is decoding, featurizing, the reward and the three HTTP hops with base64 bodies.
    "cached brief": False,
}


def tag(scenario: str, index: int) -> str:
    return str(index) if SCENARIOS[scenario] else "c"


class InProcess:
    """The components the services run, loaded in this process: one round does by hand what
    one /v1/score does across the services."""

    def __init__(self) -> None:
        self.limits = ImageLimits()
        featurizer_settings = FeaturizerSettings()
        self.featurizer = Featurizer.from_settings(
            featurizer_settings, load_detector(featurizer_settings)
        )
        describer_settings = DescriberSettings()
        self.describer = Describer(create_backend(describer_settings), describer_settings)
        self.weights = ScorerSettings().match_weights()

    def round(self, items: list[dict[str, str]], brief: Context) -> dict[str, float]:
        started = time.perf_counter()
        images = [
            # What every service does with a JSON creative: base64 to bytes, then pixels.
            decode_image(Creative.model_validate(c).data, limits=self.limits)
            for c in items
        ]
        decoded = time.perf_counter()
        verbalizations = self.featurizer.featurize(images)
        featurized = time.perf_counter()
        target = asyncio.run(self.describer.describe(context=brief, target=KpiTarget()))
        described = time.perf_counter()
        match_rewards(verbalizations, target.verbalization, self.weights)
        rewarded = time.perf_counter()
        return {
            "decode": decoded - started,
            "featurize": featurized - decoded,
            "describe": described - featurized,
            "reward": rewarded - described,
        }


def over_http(client: httpx.Client, items: list[dict[str, str]], brief: Context) -> float:
    body = {
        "context": json.loads(brief.model_dump_json()),
        "target": {"name": "likes", "level": "high"},
        "reward": "match",
        "creatives": items,
    }
    # Encoded before the clock starts: the in-process side starts from the same objects and
    # encodes nothing, and json.dumps of ~650 KB is the client's work (~4 ms here), not the
    # services' overhead.
    content = json.dumps(body).encode()
    started = time.perf_counter()
    response = client.post(
        "/v1/score", content=content, headers={"Content-Type": "application/json"}
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def measure(
    rounds: int, items: list[dict[str, str]]
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    """Both ways, alternating round by round (which goes first alternates too), so that
    whatever else the machine is doing weighs on both sides of the ratio alike."""
    components = InProcess()
    timings: dict[str, list[dict[str, float]]] = {scenario: [] for scenario in SCENARIOS}
    latencies: dict[str, list[float]] = {scenario: [] for scenario in SCENARIOS}
    # The scoring path only: no generator worker competing for the two cores.
    scoring = ("featurizer", "describer", "scorer", "gateway")
    with (
        tempfile.TemporaryDirectory() as run_dir,
        local_stack(Path(run_dir), services=scoring) as stack,
    ):
        headers = {"Authorization": f"Bearer {create_api_key(stack.database_url)}"}
        with httpx.Client(base_url=stack.url("gateway"), headers=headers, timeout=600) as client:
            for scenario in SCENARIOS:
                for index in range(rounds + 1):  # round 0 warms up
                    local = context("in" + tag(scenario, index))
                    remote = context("http" + tag(scenario, index))
                    if index % 2:
                        elapsed = over_http(client, items, remote)
                        parts = components.round(items, local)
                    else:
                        parts = components.round(items, local)
                        elapsed = over_http(client, items, remote)
                    if index:
                        timings[scenario].append(parts)
                        latencies[scenario].append(elapsed)
    return timings, latencies


def report(scenario: str, components: list[dict[str, float]], latencies: list[float]) -> None:
    median = {name: statistics.median(t[name] for t in components) for name in components[0]}
    component_sum = sum(median.values())
    critical_path = (
        median["decode"] + max(median["featurize"], median["describe"]) + median["reward"]
    )
    end_to_end = statistics.median(latencies)
    overhead = end_to_end / component_sum - 1
    spread = f"min {min(latencies) * 1000:.1f}, max {max(latencies) * 1000:.1f}"
    verdict = "met" if overhead <= GOAL_OVERHEAD else "NOT met"
    print(f"{scenario}: /v1/score, {CREATIVES} creatives, match, {len(latencies)} rounds (medians)")
    for name, seconds in median.items():
        print(f"  in-process {name:<10} {seconds * 1000:9.1f} ms")
    print(f"  in-process sum        {component_sum * 1000:9.1f} ms")
    print(f"  critical path         {critical_path * 1000:9.1f} ms  (featurize || describe)")
    print(f"  end to end over HTTP  {end_to_end * 1000:9.1f} ms  ({spread})")
    print(f"  overhead vs sum       {overhead * 100:+9.1f} %   goal <= 30%: {verdict}")
    print(f"  overhead vs critical  {(end_to_end / critical_path - 1) * 100:+9.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    prepare_all(world_sd=False, log=False)
    items = creatives()
    components, latencies = measure(args.rounds, items)
    for scenario in SCENARIOS:
        report(scenario, components[scenario], latencies[scenario])


if __name__ == "__main__":
    main()
