"""Hot reload from the checkpoint registry: the describer serves the published LoRA adapter,
picks up a new version without a restart, and refuses a tampered one while it keeps serving;
the served version's publish time is exported for the staleness alerts, and the served version
and its load time for the models dashboard."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common import metrics
from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    POINTER_FILE,
    BaseModelRef,
    CheckpointRef,
    DatasetRef,
    load_manifest,
    publish_checkpoint,
)
from services.common.contracts import Context, Verbalization
from services.describer.app import create_app
from services.describer.backends.transformers_backend import TransformersBackend
from services.describer.settings import DescriberSettings
from tests.metric_names import served_checkpoint_versions

NAME = "boigllm"


def _adapter(base_dir: Path, folder: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter for the tiny model, as the trainer saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    config = LoraConfig(
        r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(str(folder))
    return folder


def _publish(registry: Path, adapter: Path, *, make_current: bool = True) -> CheckpointRef:
    return publish_checkpoint(
        registry,
        NAME,
        adapter,
        kind=KIND_BOIGLLM_LORA,
        base_model=BaseModelRef(name="tiny-llama", version="test"),
        data=DatasetRef(manifest_sha256="0" * 64, version="v1"),
        metrics={"train_loss": 1.0},
        make_current=make_current,
    )


def _exported_publish_time() -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "boig_checkpoint_published_timestamp_seconds", {"service": "describer"}
    )


def _load_seconds() -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "boig_model_load_seconds", {"service": "describer", "model": "llm"}
    )


def _publish_time(ref: CheckpointRef) -> float:
    return load_manifest(ref, verify=False).created_at.timestamp()


def _wait_for(client: TestClient, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        health: dict[str, Any] = client.get("/health").json()
        if done(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def _likelihood(
    client: TestClient, context: Context, verbalizations: list[Verbalization]
) -> dict[str, Any]:
    body = {
        "context": context.model_dump(mode="json"),
        "kpi_name": "likes",
        "verbalizations": [v.model_dump(mode="json") for v in verbalizations],
    }
    response = client.post("/likelihood", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return [_adapter(tiny_model_dir, folder / f"adapter-{seed}", seed) for seed in (1, 2, 3)]


def test_backend_merges_the_adapter_and_versions_it(
    tiny_model_dir: Path, adapters: list[Path]
) -> None:
    base = TransformersBackend.load(tiny_model_dir, device="cpu")
    tuned = TransformersBackend.load(
        tiny_model_dir, device="cpu", adapter=adapters[0], adapter_version="v-a"
    )
    assert tuned.info.version == f"v-a+{base.info.version}"
    prompt = base.chat_prompt([{"role": "user", "content": "level"}])
    continuations = [" low", " medium", " high"]
    assert base.continuation_logprobs([prompt], continuations)[0] != pytest.approx(
        tuned.continuation_logprobs([prompt], continuations)[0]
    )


def test_hot_reload_from_the_registry(
    tiny_model_dir: Path,
    adapters: list[Path],
    tmp_path: Path,
    context: Context,
    verbalizations: list[Verbalization],
) -> None:
    registry = tmp_path / "registry"
    first = _publish(registry, adapters[0])
    settings = DescriberSettings(
        model_path=tiny_model_dir,
        device="cpu",
        checkpoint_registry=registry,
        checkpoint_poll_seconds=0.05,
    )
    metrics.MODEL_LOAD_SECONDS.labels("describer", "llm").set(-1.0)  # not this test's load
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["checkpoint"] == first.version
        assert health["model"]["version"].startswith(first.version + "+")
        assert _exported_publish_time() == _publish_time(first)
        assert served_checkpoint_versions("describer", "llm") == [health["model"]["version"]]
        first_load = _load_seconds()
        assert first_load is not None and first_load > 0
        on_first = _likelihood(client, context, verbalizations)
        assert on_first["model"]["version"].startswith(first.version + "+")

        # A new publish is picked up without a restart, and the cache does not answer for it.
        second = _publish(registry, adapters[1])
        health = _wait_for(client, lambda h: h["checkpoint"] == second.version)
        assert health["checkpoint"] == second.version
        assert _exported_publish_time() == _publish_time(second)
        # The new version replaces the old one's series: one version served, one series.
        assert served_checkpoint_versions("describer", "llm") == [health["model"]["version"]]
        assert health["model"]["version"].startswith(second.version + "+")
        assert _load_seconds() != first_load
        on_second = _likelihood(client, context, verbalizations)
        assert on_second["model"]["version"].startswith(second.version + "+")
        assert on_second["results"] != on_first["results"]

        # A tampered version is refused; the current one keeps serving.
        third = _publish(registry, adapters[2], make_current=False)
        weights = third.path / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
        (registry / NAME / POINTER_FILE).write_text(third.version + "\n")
        health = _wait_for(client, lambda h: h["checkpoint_error"] is not None)
        assert third.version in health["checkpoint_error"]
        assert health["checkpoint"] == second.version
        assert _exported_publish_time() == _publish_time(second)
        assert served_checkpoint_versions("describer", "llm") == [health["model"]["version"]]
        still = _likelihood(client, context, verbalizations)
        assert still["model"]["version"] == on_second["model"]["version"]
        assert still["results"] == on_second["results"]


def test_a_tampered_checkpoint_at_start_serves_the_base_model(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    ref = _publish(registry, adapters[0])
    (ref.path / "adapter_config.json").write_text("{}")
    settings = DescriberSettings(
        model_path=tiny_model_dir, device="cpu", checkpoint_registry=registry
    )
    metrics.CHECKPOINT_PUBLISHED.labels("describer").set(1.0)  # what an earlier test left
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert health["checkpoint"] is None
        assert ref.version in health["checkpoint_error"]
        assert "+" not in health["model"]["version"]
        assert _exported_publish_time() == 0.0  # BoigNoCheckpointLoaded's signal
        assert served_checkpoint_versions("describer", "llm") == [
            health["model"]["version"]
        ]  # the base model's


def test_without_a_registry_the_base_model_serves(tiny_model_dir: Path) -> None:
    settings = DescriberSettings(model_path=tiny_model_dir, device="cpu")
    metrics.CHECKPOINT_PUBLISHED.labels("describer").set(1.0)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert health["checkpoint"] is None
        assert health["checkpoint_error"] is None
    # No registry, no checkpoint to miss: the figure is left alone (absent in a fresh process).
    assert _exported_publish_time() == 1.0
