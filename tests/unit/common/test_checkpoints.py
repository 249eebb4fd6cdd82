"""The checkpoint registry: atomic publish, integrity checks, pointer moves, rollback."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import load_file, save_file

from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    KIND_BOIGSD_LORA,
    BaseModelRef,
    CheckpointError,
    CheckpointManifest,
    CheckpointRef,
    CheckpointRejected,
    CheckpointWatcher,
    DatasetRef,
    current_checkpoint,
    list_versions,
    load_manifest,
    prune_versions,
    publish_checkpoint,
    rollback,
)
from services.common.errors import BackendError, InvalidInput, NotFound

NAME = "boigllm-behaviour"
BASE = BaseModelRef(name="HuggingFaceTB/SmolLM2-135M-Instruct", version="a" * 40)
DATA = DatasetRef(manifest_sha256="b" * 64, version="2026-11-01")


def _training_output(root: Path, seed: int = 0) -> Path:
    """A LoRA output as peft writes it: safetensors weights, JSON config, tokenizer, README."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file(
        {"lora_A": rng.standard_normal((4, 8)).astype(np.float32)},
        str(root / "adapter_model.safetensors"),
    )
    (root / "adapter_config.json").write_text(json.dumps({"r": 4, "seed": seed}))
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    (root / "README.md").write_text("# adapter\n")
    return root


def _publish(
    registry: Path, source: Path, *, metrics: dict[str, float] | None = None
) -> CheckpointRef:
    return publish_checkpoint(
        registry,
        NAME,
        source,
        kind=KIND_BOIGLLM_LORA,
        base_model=BASE,
        data=DATA,
        hyperparameters={"lr": 2e-4, "rank": 4, "use_dora": False, "scheduler": "cosine"},
        metrics=metrics if metrics is not None else {"eval_accuracy": 0.61},
    )


def test_publish_then_current_then_verify(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    source = _training_output(tmp_path / "out")
    assert current_checkpoint(registry, NAME) is None

    ref = _publish(registry, source)

    assert current_checkpoint(registry, NAME) == ref
    assert ref.path == registry / NAME / "versions" / ref.version
    manifest = load_manifest(ref)
    assert manifest.version == ref.version
    assert manifest.base_model == BASE
    assert manifest.data == DATA
    assert manifest.metrics == {"eval_accuracy": 0.61}
    assert manifest.hyperparameters["use_dora"] is False
    assert manifest.hyperparameters["rank"] == 4
    weights = source / "adapter_model.safetensors"
    assert set(manifest.files) == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer/tokenizer.json",
        "README.md",
    }
    assert manifest.files["adapter_model.safetensors"].sha256 == (
        hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    assert manifest.files["adapter_model.safetensors"].size == weights.stat().st_size
    published = load_file(str(ref.path / "adapter_model.safetensors"))
    np.testing.assert_array_equal(published["lora_A"], load_file(str(weights))["lora_A"])
    # Nothing staged is left behind, and the source is untouched (copied, not moved).
    assert not list((registry / NAME).rglob(".tmp-*"))
    assert not list((registry / NAME).glob(".current-*"))
    assert weights.exists()


def test_tampered_file_is_detected(tmp_path: Path) -> None:
    ref = _publish(tmp_path / "registry", _training_output(tmp_path / "out"))
    config = ref.path / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": 4', '"r": 9'))  # same size, new bytes

    with pytest.raises(CheckpointError, match=r"adapter_config\.json.*sha256"):
        load_manifest(ref)
    assert load_manifest(ref, verify=False).version == ref.version


def test_a_checkpoint_of_another_kind_is_refused_before_its_files_are_read(
    tmp_path: Path,
) -> None:
    ref = _publish(tmp_path / "registry", _training_output(tmp_path / "out"))
    (ref.path / "README.md").unlink()  # verification would fail, but the kind is checked first

    with pytest.raises(
        CheckpointError, match=rf"{NAME}/{ref.version} is a 'boigllm-lora', not a 'boigsd-lora'"
    ):
        load_manifest(ref, kind=KIND_BOIGSD_LORA)
    assert load_manifest(ref, verify=False, kind=KIND_BOIGLLM_LORA).kind == KIND_BOIGLLM_LORA


def test_unlisted_file_is_detected(tmp_path: Path) -> None:
    ref = _publish(tmp_path / "registry", _training_output(tmp_path / "out"))
    (ref.path / "tokenizer" / "extra.safetensors").write_bytes(b"smuggled")

    with pytest.raises(CheckpointError, match=r"does not list: tokenizer/extra\.safetensors"):
        load_manifest(ref)


def test_missing_file_is_detected(tmp_path: Path) -> None:
    ref = _publish(tmp_path / "registry", _training_output(tmp_path / "out"))
    (ref.path / "README.md").unlink()

    with pytest.raises(CheckpointError, match=r"missing files: README\.md"):
        load_manifest(ref)


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "optimizer.pt", "state.pkl"])
def test_pickle_files_are_refused(tmp_path: Path, filename: str) -> None:
    registry = tmp_path / "registry"
    source = _training_output(tmp_path / "out")
    (source / filename).write_bytes(b"\x80\x04pickle")

    with pytest.raises(CheckpointRejected, match=r"pickle.*safetensors") as caught:
        _publish(registry, source)
    assert isinstance(caught.value, InvalidInput)
    assert current_checkpoint(registry, NAME) is None
    assert list_versions(registry, NAME) == []
    assert not list(registry.rglob("*.safetensors"))


def test_unknown_file_types_and_bad_names_are_refused(tmp_path: Path) -> None:
    source = _training_output(tmp_path / "out")
    (source / "run.sh").write_text("rm -rf /")
    with pytest.raises(CheckpointRejected, match=r"run\.sh: file type \.sh is not allowed"):
        _publish(tmp_path / "registry", source)
    with pytest.raises(CheckpointRejected, match="checkpoint name"):
        publish_checkpoint(
            tmp_path / "registry",
            "../escape",
            _training_output(tmp_path / "ok"),
            kind=KIND_BOIGLLM_LORA,
            base_model=BASE,
            data=DATA,
        )


def test_readers_never_see_a_missing_or_partial_pointer(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    first = _publish(registry, _training_output(tmp_path / "out0", seed=0))
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()
    reads = 0

    def read_in_a_loop() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                ref = current_checkpoint(registry, NAME)
                if ref is None:
                    problems.append("pointer missing")
                    continue
                load_manifest(ref, verify=True)
                seen.add(ref.version)
                reads += 1
            except Exception as exc:  # the test records every failure a reader could see
                problems.append(repr(exc))

    reader = threading.Thread(target=read_in_a_loop)
    reader.start()
    try:
        published = [first.version]
        for seed in range(1, 21):
            source = _training_output(tmp_path / f"out{seed}", seed=seed)
            published.append(_publish(registry, source).version)
    finally:
        stop.set()
        reader.join(timeout=30)

    assert not reader.is_alive()
    assert problems == []
    assert reads > 0
    assert seen <= set(published)
    current = current_checkpoint(registry, NAME)
    assert current is not None and current.version == published[-1]
    assert [ref.version for ref in list_versions(registry, NAME)] == sorted(published)
    assert len(set(published)) == 21


def test_watcher_reports_each_move_exactly_once(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    watcher = CheckpointWatcher(registry, NAME)
    assert watcher.poll() is None

    first = _publish(registry, _training_output(tmp_path / "a", seed=1))
    assert watcher.poll() == first
    assert watcher.poll() is None
    assert watcher.poll() is None

    second = _publish(registry, _training_output(tmp_path / "b", seed=2))
    assert watcher.poll() == second
    assert watcher.poll() is None

    rollback(registry, NAME, first.version)
    assert watcher.poll() == first
    assert watcher.poll() is None
    assert watcher.seen == first.version


def test_publish_without_promotion_keeps_the_pointer(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    live = _publish(registry, _training_output(tmp_path / "a", seed=1))
    candidate = publish_checkpoint(
        registry,
        NAME,
        _training_output(tmp_path / "b", seed=2),
        kind=KIND_BOIGLLM_LORA,
        base_model=BASE,
        data=DATA,
        make_current=False,
    )
    assert current_checkpoint(registry, NAME) == live
    assert candidate in list_versions(registry, NAME)
    assert rollback(registry, NAME, candidate.version) == candidate
    assert current_checkpoint(registry, NAME) == candidate


def test_rollback_moves_the_pointer_to_a_verified_version(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    first = _publish(registry, _training_output(tmp_path / "a", seed=1))
    second = _publish(registry, _training_output(tmp_path / "b", seed=2))
    assert current_checkpoint(registry, NAME) == second

    assert rollback(registry, NAME, first.version) == first
    assert current_checkpoint(registry, NAME) == first
    assert [ref.version for ref in list_versions(registry, NAME)] == sorted(
        [first.version, second.version]
    )

    with pytest.raises(NotFound):
        rollback(registry, NAME, "20000101T000000Z-00000000")
    (second.path / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError) as caught:
        rollback(registry, NAME, second.version)
    assert isinstance(caught.value, BackendError)
    assert current_checkpoint(registry, NAME) == first


def test_prune_keeps_the_newest_versions_and_the_current_one(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    refs = [_publish(registry, _training_output(tmp_path / str(i), seed=i)) for i in range(5)]
    rollback(registry, NAME, refs[0].version)  # the oldest is the one being served

    deleted = prune_versions(registry, NAME, keep=2)

    assert deleted == [refs[1].version, refs[2].version]
    kept = {ref.version for ref in list_versions(registry, NAME)}
    assert kept == {refs[0].version, refs[3].version, refs[4].version}
    assert current_checkpoint(registry, NAME) == refs[0]
    assert not any(p.name.startswith(".trash") for p in refs[0].path.parent.iterdir())
    assert prune_versions(registry, NAME, keep=2) == []
    with pytest.raises(ValueError, match="at least 1"):
        prune_versions(registry, NAME, keep=0)


def test_pointer_at_a_missing_version_is_an_error(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    _publish(registry, _training_output(tmp_path / "a"))
    (registry / NAME / "current").write_text("garbage\n")
    with pytest.raises(CheckpointError, match="malformed"):
        current_checkpoint(registry, NAME)
    (registry / NAME / "current").write_text("20000101T000000Z-00000000\n")
    with pytest.raises(CheckpointError, match="missing version"):
        current_checkpoint(registry, NAME)


def test_manifest_json_round_trip(tmp_path: Path) -> None:
    ref = _publish(tmp_path / "registry", _training_output(tmp_path / "out"))
    manifest = load_manifest(ref)
    on_disk = json.loads(ref.manifest_path.read_text())
    assert on_disk["format_version"] == 1
    assert on_disk["kind"] == "boigllm-lora"
    assert CheckpointManifest.model_validate_json(manifest.model_dump_json()) == manifest
    assert CheckpointManifest.model_validate(on_disk) == manifest


def test_manifest_refuses_unsafe_content() -> None:
    valid = {
        "name": NAME,
        "kind": "boigsd-lora",
        "version": "20261126T073000Z-1a2b3c4d",
        "created_at": datetime(2026, 11, 26, 8, 30, tzinfo=timezone(timedelta(hours=1))),
        "base_model": BASE.model_dump(),
        "data": DATA.model_dump(),
        "files": {"unet/lora.safetensors": {"sha256": "c" * 64, "size": 3}},
    }
    manifest = CheckpointManifest.model_validate(valid)
    assert manifest.created_at == datetime(2026, 11, 26, 7, 30, tzinfo=UTC)
    for bad in (
        {"files": {"../etc/passwd.txt": {"sha256": "c" * 64, "size": 3}}},
        {"files": {"model.bin": {"sha256": "c" * 64, "size": 3}}},
        {"files": {"manifest.json": {"sha256": "c" * 64, "size": 3}}},
        {"metrics": {"loss": float("nan")}},
        {"created_at": datetime(2026, 11, 26, 7, 30)},
        {"version": "latest"},
        {"surprise": 1},
    ):
        with pytest.raises(ValidationError):
            CheckpointManifest.model_validate({**valid, **bad})
