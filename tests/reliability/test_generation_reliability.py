"""Jobs survive what production throws at them: a worker killed with SIGKILL mid-job, a Redis
restart while a job waits, cancellation at either stage, failures, 50 submissions at once.

Every test runs the real gateway and generator processes against a real Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.reliability.harness import (
    Topology,
    own_redis_server,
    port_open,
    set_upstream_error,
    wait_for,
)

pytestmark = pytest.mark.redis

CONTEXT = {"account": "acme", "text": "summer sale", "keywords": ["beach"]}


def body(**overrides: Any) -> dict[str, Any]:
    return {"context": CONTEXT, "target": {"name": "likes", "level": "high"}, **overrides}


# A job long enough to be caught running (~2-3 s on one core), well inside the 8 s time limit.
LONG = {"count": 4, "steps": 100, "seed": 11}


def image_rows(topology: Topology, job_id: str) -> int:
    return len(topology.store.images(job_id))


def download(topology: Topology, url: str) -> bytes:
    response = httpx.get(f"{topology.gateway_url}{url}", headers=topology.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


def test_a_job_runs_end_to_end_with_progress_images_and_rewards(topology: Topology) -> None:
    topology.start_gateway()
    topology.start_worker()
    job_id = topology.submit(body(**LONG))
    running = topology.wait_state(job_id, {"running", "succeeded"})
    seen_progress = running["progress"] is not None
    while running["state"] == "running":
        seen_progress |= running["progress"] is not None and running["progress"]["step"] > 0
        time.sleep(0.05)
        running = topology.status(job_id)
    assert seen_progress, "no denoising progress was ever reported"
    done = topology.wait_state(job_id, {"succeeded"})
    assert done["attempts"] == 1 and done["error"] is None
    outcome = done["outcome"]
    assert outcome["strategy"] == "prompt" and outcome["steps"] == 100
    assert "orange" in outcome["prompt"] and "navy" in outcome["negative_prompt"]
    assert outcome["target_description"] == "stub description for high"
    assert {"diffusion", "describer", "scorer"} <= set(outcome["models"])
    images = done["images"]
    assert [image["rank"] for image in images] == list(range(1, 5))
    rewards = [image["reward"] for image in images]
    assert rewards == sorted(rewards, reverse=True)
    png = Image.open(io.BytesIO(download(topology, images[0]["url"])))
    assert png.size == (64, 64)


def test_best_of_n_keeps_the_best_candidates_by_reward(topology: Topology) -> None:
    topology.start_gateway()
    topology.start_worker()
    best = topology.submit(body(strategy="best_of_n", count=2, candidates=6, seed=5))
    every = topology.submit(body(strategy="prompt", count=6, seed=5))
    best_images = topology.wait_state(best, {"succeeded"})["images"]
    all_images = topology.wait_state(every, {"succeeded"})["images"]
    # Image i of a job is drawn from seed + i, so the six candidates are the six prompt images.
    digest = {image["seed"]: image["reward"] for image in all_images}
    top_two = sorted(digest, key=lambda seed: -digest[seed])[:2]
    assert [image["seed"] for image in best_images] == top_two
    assert topology.status(best)["outcome"]["candidates"] == 6
    # boigsd with nothing published: the base pipeline, and the job says so.
    fallback = topology.wait_state(topology.submit(body(strategy="boigsd", seed=5)), {"succeeded"})
    assert "boigsd" not in fallback["outcome"]["models"]
    assert any("base pipeline" in note for note in fallback["outcome"]["notes"])


def test_a_worker_killed_mid_job_leaves_it_to_complete_exactly_once(topology: Topology) -> None:
    topology.start_gateway()
    topology.start_worker("w1")
    job_id = topology.submit(body(**LONG))
    wait_for(
        lambda: (p := topology.status(job_id)["progress"]) and p["step"] >= 5,
        30,
        "the job to be denoising",
        every=0.02,
    )
    topology.kill_workers(signal.SIGKILL)
    assert topology.status(job_id)["state"] == "running"  # nobody finished it
    topology.start_worker("w2")
    done = topology.wait_state(job_id, {"succeeded", "failed"}, timeout=60)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert len(done["images"]) == 4 == image_rows(topology, job_id)
    files = list((topology.root / "artifacts").rglob("*.png"))
    assert len(files) == 4, "a duplicate or a missing image file"
    # Let any late redelivery (the broker's visibility timeout) arrive: it must change nothing.
    time.sleep(3)
    again = topology.status(job_id)
    assert again["attempts"] == 2 and image_rows(topology, job_id) == 4


def test_a_redis_restart_while_a_job_is_queued_loses_nothing(
    topology: Topology, tmp_path: Path
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary to restart")
    command, port = own_redis_server(tmp_path)
    redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), 10, "redis-server to listen")
        topology.redis_url = f"redis://127.0.0.1:{port}/0"
        topology.start_gateway()
        topology.start_worker()
        busy = topology.submit(body(**LONG))
        queued = topology.submit(body(count=1, seed=3))
        topology.wait_state(busy, {"running"})
        assert topology.status(queued)["state"] == "queued"
        # Redis restarts without persistence, as CI's does: its queues come back empty.
        redis_server.terminate()
        redis_server.wait(timeout=10)
        redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open(port), 10, "redis-server to listen again")
        for job_id in (busy, queued):
            done = topology.wait_state(job_id, {"succeeded", "failed"}, timeout=60)
            assert done["state"] == "succeeded", done
            assert image_rows(topology, job_id) == len(done["images"]) == done["request"]["count"]
    finally:
        topology.stop()
        redis_server.terminate()
        redis_server.wait(timeout=10)


def test_cancel_while_queued_and_while_running(topology: Topology) -> None:
    topology.start_gateway()
    topology.start_worker()
    running = topology.submit(body(**LONG))
    queued = topology.submit(body(count=1, seed=2))
    topology.wait_state(running, {"running"})
    url = f"{topology.gateway_url}/v1/jobs"
    canceled = httpx.delete(f"{url}/{queued}", headers=topology.headers).json()
    assert canceled["state"] == "canceled"
    wait_for(
        lambda: (p := topology.status(running)["progress"]) and p["step"] >= 2,
        30,
        "denoising to start",
        every=0.02,
    )
    asked = httpx.delete(f"{url}/{running}", headers=topology.headers).json()
    assert asked["cancel_requested"]
    stopped = topology.wait_state(running, {"canceled", "succeeded"}, timeout=30)
    assert stopped["state"] == "canceled"
    assert stopped["progress"] is None and image_rows(topology, running) == 0
    # The worker is free again, and the queued job's message did not run it.
    after = topology.submit(body(count=1, seed=4))
    assert topology.wait_state(after, {"succeeded"})["state"] == "succeeded"
    assert topology.status(queued)["attempts"] == 0


def test_a_failing_job_reports_a_typed_error(topology: Topology) -> None:
    topology.start_gateway()
    topology.start_worker()
    set_upstream_error(topology.upstream_url, "invalid_input")
    refused = topology.wait_state(topology.submit(body(seed=1)), {"failed"})
    assert refused["error"]["type"] == "invalid_input" and refused["attempts"] == 1
    # A transient error (the describer's model is loading) is retried, then reported.
    set_upstream_error(topology.upstream_url, "model_unavailable")
    unavailable = topology.wait_state(topology.submit(body(seed=1)), {"failed"})
    assert unavailable["error"]["type"] == "model_unavailable"
    assert unavailable["attempts"] == 2  # max_retries is 1 here
    # Without the low-level description there is no negative prompt, and the job says so.
    set_upstream_error(topology.upstream_url, "model_output_error", levels=["low"])
    partial = topology.wait_state(topology.submit(body(seed=1)), {"succeeded", "failed"})
    assert partial["state"] == "succeeded", partial
    assert partial["outcome"]["negative_prompt"] is None
    assert "model_output_error" in partial["outcome"]["notes"][0]
    set_upstream_error(topology.upstream_url, None)
    assert topology.wait_state(topology.submit(body(seed=1)), {"succeeded"})


def test_fifty_concurrent_submissions_are_all_accounted_for(topology: Topology) -> None:
    topology.start_gateway()
    topology.start_worker()

    async def submit_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=topology.gateway_url, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/generate",
                        json=body(count=1, steps=2, seed=n),
                        headers={**topology.headers, "Idempotency-Key": f"burst-{n}"},
                    )
                    for n in range(50)
                )
            )

    responses = asyncio.run(submit_all())
    assert [r.status_code for r in responses] == [202] * 50
    job_ids = [r.json()["job_id"] for r in responses]
    assert len(set(job_ids)) == 50
    for job_id in job_ids:
        assert topology.wait_state(job_id, {"succeeded", "failed"}, timeout=120)["state"] == (
            "succeeded"
        )
    images = [image for job_id in job_ids for image in topology.store.images(job_id)]
    assert len(images) == 50 and len({image.id for image in images}) == 50
    assert all(topology.status(job_id)["attempts"] == 1 for job_id in job_ids)
    digests = {hashlib.sha256(download(topology, f"/v1/images/{i.id}")).hexdigest() for i in images}
    assert len(digests) == 50  # 50 seeds, 50 different images


def publish_lora(registry: Path, folder: Path) -> str:
    from services.common.checkpoints import (
        KIND_BOIGSD_LORA,
        BaseModelRef,
        DatasetRef,
        publish_checkpoint,
    )

    ref = publish_checkpoint(
        registry,
        "boigsd",
        folder,
        kind=KIND_BOIGSD_LORA,
        base_model=BaseModelRef(name="tiny-sd", version="test"),
        data=DatasetRef(manifest_sha256="0" * 64, version="test"),
    )
    return ref.version


def test_a_moved_boigsd_pointer_serves_the_next_job_and_spares_the_one_in_flight(
    topology: Topology, make_boigsd_lora: Callable[[Path, Path, int], Path]
) -> None:
    registry = topology.root / "registry"
    topology.settings["BOIG_GENERATOR_CHECKPOINT_REGISTRY"] = str(registry)
    first = publish_lora(registry, make_boigsd_lora(topology.model_path, topology.root / "a", 1))
    next_lora = make_boigsd_lora(topology.model_path, topology.root / "b", 2)
    topology.start_gateway()
    topology.start_worker()
    in_flight = topology.submit(body(strategy="boigsd", **LONG))
    wait_for(
        lambda: (p := topology.status(in_flight)["progress"]) and p["step"] >= 2,
        30,
        "the job to be denoising",
        every=0.02,
    )
    second = publish_lora(registry, next_lora)
    assert topology.status(in_flight)["state"] == "running"  # the pointer moved mid-job
    done = topology.wait_state(in_flight, {"succeeded"})
    assert done["outcome"]["models"]["boigsd"]["version"] == first
    assert done["outcome"]["notes"] == []
    after = topology.wait_state(topology.submit(body(strategy="boigsd", seed=3)), {"succeeded"})
    assert after["outcome"]["models"]["boigsd"]["version"] == second
