"""The train-llm / eval-llm recipe's bookkeeping: where each stage writes, and when a stage's
output is reused instead of rebuilt."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from services import cli
from services.common.prompts import PROMPT_VERSION
from services.tooling import llm_recipe
from services.tooling.llm_recipe import (
    Ablation,
    DatasetMismatch,
    LlmPaths,
    check_dataset,
    current_dataset,
    preset_config,
    run_evaluation,
)
from services.trainer.evaluate.run import (
    BASE_MODEL,
    BOIGLLM,
    BOIGLLM_SAMPLED_COLORS,
    EvaluationSettings,
)
from services.trainer.finetune.publish import dataset_ref


def _paths(tmp_path: Path) -> LlmPaths:
    return LlmPaths(home=tmp_path, seed=3, posts_per_brand=40)


def _dataset(
    paths: LlmPaths, source_sha256: str, version: str = "v1", *, folded_onto: str | None = None
) -> Path:
    folder = paths.data / version
    folder.mkdir(parents=True)
    manifest: dict[str, object] = {"source": {"sha256": source_sha256}}
    if folded_onto is not None:  # what a retrain's fold writes
        manifest["feedback"] = {"previous_version": folded_onto, "rows": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (paths.data / "latest").write_text(version)
    return folder


def test_each_world_gets_its_own_folders(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    other = LlmPaths(home=tmp_path, seed=4, posts_per_brand=40)
    assert paths.world != other.world
    assert paths.data != other.data and paths.run != other.run
    assert paths.registry == other.registry  # one registry: the describer serves one name


def test_a_dataset_is_reused_only_for_the_same_posts_file(tmp_path: Path) -> None:
    import hashlib

    paths = _paths(tmp_path)
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"id": "a"}\n')
    assert current_dataset(paths, posts) is None  # nothing ingested yet

    folder = _dataset(paths, hashlib.sha256(posts.read_bytes()).hexdigest())
    assert current_dataset(paths, posts) == folder

    posts.write_text('{"id": "b"}\n')  # the world changed: ingest again
    assert current_dataset(paths, posts) is None


def test_a_dataset_folded_with_feedback_stays_the_worlds(tmp_path: Path) -> None:
    # After `make retrain`, `make models` / `make train-world-sd` must reuse the folded
    # version (ingesting the world again dropped the feedback from `latest`), must not train
    # BoigLLM again over the retrain's gate, and a fine-tune on it gets a run folder of its own.
    import hashlib

    paths = _paths(tmp_path)
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"id": "a"}\n')
    world = _dataset(paths, hashlib.sha256(posts.read_bytes()).hexdigest(), "v1")
    folded = _dataset(paths, "c" * 64, "v2", folded_onto="v1")
    again = _dataset(paths, "d" * 64, "v3", folded_onto="v2")
    assert current_dataset(paths, posts) == again
    assert llm_recipe.folded_lineage(again) == [again, folded, world]
    assert paths.run_for(world) == paths.run
    assert paths.run_for(again) == paths.run.with_name(f"{paths.run.name}-v3")

    # A fold onto another world's version, a lost previous version, a cycle: not this world's.
    _dataset(paths, "e" * 64, "v4", folded_onto="v9")
    assert current_dataset(paths, posts) is None
    (paths.data / "v1" / "manifest.json").write_text(
        json.dumps({"source": {"sha256": "f" * 64}, "feedback": {"previous_version": "v3"}})
    )
    assert llm_recipe.folded_lineage(again) == []


def test_the_served_boigllm_counts_as_current_for_any_version_it_was_folded_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.checkpoints import CheckpointRef

    paths = _paths(tmp_path)
    world = _dataset(paths, "a" * 64, "v1")
    folded = _dataset(paths, "c" * 64, "v2", folded_onto="v1")
    served = tmp_path / "served"
    served.mkdir()
    (served / "train_state.json").write_text(json.dumps({"prompt_version": PROMPT_VERSION}))

    def serve(trained_on: Path) -> None:
        data = SimpleNamespace(manifest_sha256=dataset_ref(trained_on).manifest_sha256)
        ref = CheckpointRef(name="boigllm", version="1", path=served)
        monkeypatch.setattr(llm_recipe, "current_checkpoint", lambda *_: ref)
        monkeypatch.setattr(
            llm_recipe, "load_manifest", lambda *_, **__: SimpleNamespace(data=data)
        )

    serve(world)  # the retrain kept the world's checkpoint (its candidate was rejected)
    assert llm_recipe.served_checkpoint_is_current(paths, folded)
    serve(folded)
    assert llm_recipe.served_checkpoint_is_current(paths, folded)
    assert not llm_recipe.served_checkpoint_is_current(paths, world)  # trained on later data


def test_preset_config_overrides_steps_and_keeps_warmup_below_them(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    assert preset_config(paths).max_steps == 100
    assert preset_config(paths).retrieval
    assert not preset_config(paths, "cpu-weights").retrieval
    short = preset_config(paths, max_steps=4)
    assert short.max_steps == 4 and short.warmup_steps == 3
    assert short.base_model == paths.base_model


def test_a_checkpoint_is_evaluated_only_on_its_own_dataset(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    own = _dataset(paths, "a" * 64, "v1")
    other = _dataset(paths, "b" * 64, "v2")
    trained_on = dataset_ref(own).manifest_sha256
    check_dataset(trained_on, own)  # same manifest: fine
    with pytest.raises(DatasetMismatch, match="trained on dataset manifest"):
        check_dataset(trained_on, other)


def test_evaluation_without_a_trained_model_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="make train-llm"):
        run_evaluation(_paths(tmp_path), EvaluationSettings(), with_base=False)


def test_each_ablation_is_served_once_between_boigllm_and_the_base_model() -> None:
    configurations = llm_recipe.evaluation_configurations(
        with_base=True, ablations=[Ablation.SAMPLED_COLORS, Ablation.SAMPLED_COLORS]
    )

    assert [c.label for c in configurations] == [BOIGLLM, BOIGLLM_SAMPLED_COLORS, BASE_MODEL]
    sampled = configurations[1]
    assert sampled.palette_samples == 4 and not sampled.levels
    # Without its history the checkpoint reads levels differently: it is asked for them.
    assert llm_recipe.ABLATIONS[Ablation.NO_HISTORY].levels


def test_the_cli_knows_every_ablation_by_name() -> None:
    assert set(cli.ABLATIONS) == {ablation.value for ablation in Ablation}
