"""Which LoRA a task runs with: the registry's current BoigSD, loaded when the pointer moves,
the base pipeline (said so) while none is published, and never for the other strategies; the
served version's publish time is exported for the staleness alerts, and the version itself and
its load time for the models dashboard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.common import metrics
from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    KIND_BOIGSD_LORA,
    BaseModelRef,
    CheckpointError,
    DatasetRef,
    current_checkpoint,
    load_manifest,
    publish_checkpoint,
)
from services.generator.boigsd import BoigsdLoras
from services.generator.pipeline import ImagePipeline
from tests.metric_names import served_checkpoint_versions

MakeLora = Callable[[Path, Path, int], Path]


@pytest.fixture(scope="module")
def pipeline(tiny_sd_dir: Path) -> ImagePipeline:
    return ImagePipeline(tiny_sd_dir)


def publish(registry: Path, folder: Path, kind: str = KIND_BOIGSD_LORA) -> str:
    ref = publish_checkpoint(
        registry,
        "boigsd",
        folder,
        kind=kind,
        base_model=BaseModelRef(name="tiny-sd", version="test"),
        data=DatasetRef(manifest_sha256="0" * 64, version="test"),
    )
    return ref.version


def exported_publish_time() -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "boig_checkpoint_published_timestamp_seconds", {"service": "generator"}
    )


def lora_load_seconds() -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "boig_model_load_seconds", {"service": "generator", "model": "boigsd"}
    )


def publish_time(registry: Path) -> float:
    ref = current_checkpoint(registry, "boigsd")
    assert ref is not None
    return load_manifest(ref, verify=False).created_at.timestamp()


def test_without_a_registry_boigsd_falls_back_and_says_so(pipeline: ImagePipeline) -> None:
    choice = BoigsdLoras(pipeline, None, "boigsd").choose(use_boigsd=True)
    assert choice.model is None
    assert "base pipeline" in choice.notes[0] and "REGISTRY" in choice.notes[0]


def test_nothing_published_yet_falls_back_and_says_so(
    pipeline: ImagePipeline, tmp_path: Path
) -> None:
    metrics.CHECKPOINT_PUBLISHED.labels("generator").set(1.0)  # what an earlier test left
    metrics.record_model_load("generator", "boigsd", name="boigsd", version="old", seconds=1.0)
    choice = BoigsdLoras(pipeline, tmp_path, "boigsd").choose(use_boigsd=True)
    assert choice.model is None and "no 'boigsd' checkpoint" in choice.notes[0]
    assert exported_publish_time() == 0.0  # BoigNoCheckpointLoaded's signal
    assert (
        served_checkpoint_versions("generator", "boigsd") == []
    )  # no LoRA version is served any more


def test_the_next_task_loads_a_moved_pointer_and_other_strategies_run_without_it(
    pipeline: ImagePipeline, tiny_sd_dir: Path, tmp_path: Path, make_boigsd_lora: MakeLora
) -> None:
    registry = tmp_path / "registry"
    loras = BoigsdLoras(pipeline, registry, "boigsd")
    first = publish(registry, make_boigsd_lora(tiny_sd_dir, tmp_path / "a", 1))
    metrics.MODEL_LOAD_SECONDS.labels("generator", "boigsd").set(-1.0)  # not this test's
    choice = loras.choose(use_boigsd=True)
    assert choice.model is not None and choice.model.version == first
    assert pipeline.lora_version == first and choice.notes == []
    assert exported_publish_time() == publish_time(registry)
    assert served_checkpoint_versions("generator", "boigsd") == [first]
    first_load = lora_load_seconds()
    assert first_load is not None and first_load > 0
    # The prompt and best_of_n strategies are the base pipeline's; boigsd tasks still get
    # the same version.
    assert loras.choose(use_boigsd=False).model is None and pipeline.lora_version is None
    assert served_checkpoint_versions("generator", "boigsd") == [first]
    second = publish(registry, make_boigsd_lora(tiny_sd_dir, tmp_path / "b", 2))
    assert second != first
    moved = loras.choose(use_boigsd=True)
    assert moved.model is not None and moved.model.version == second
    assert pipeline.lora_version == second
    assert exported_publish_time() == publish_time(registry)
    assert served_checkpoint_versions("generator", "boigsd") == [
        second
    ]  # the old version's series is gone
    assert lora_load_seconds() != first_load
    loras.choose(use_boigsd=False)


def test_a_checkpoint_of_another_kind_is_refused(
    pipeline: ImagePipeline, tiny_sd_dir: Path, tmp_path: Path, make_boigsd_lora: MakeLora
) -> None:
    registry = tmp_path / "registry"
    publish(registry, make_boigsd_lora(tiny_sd_dir, tmp_path / "a", 1), kind=KIND_BOIGLLM_LORA)
    with pytest.raises(CheckpointError, match="not a 'boigsd-lora'"):
        BoigsdLoras(pipeline, registry, "boigsd").choose(use_boigsd=True)
