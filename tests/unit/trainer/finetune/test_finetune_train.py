"""LoRA fine-tuning on a tiny Llama: it learns, it resumes exactly, it writes no pickle."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.common.prompts import PROMPT_VERSION
from services.common.serving_profile import ServingProfile
from services.trainer.finetune.config import FinetuneConfig, tiny_preset
from services.trainer.finetune.data import resolve_dataset_dir
from services.trainer.finetune.train import (
    CHECKPOINTS,
    StepReport,
    TrainResult,
    finetune,
    learning_rate_at,
)

SAFE_SUFFIXES = {".safetensors", ".json", ".jsonl", ".jinja"}


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    return finetune(dataset_dir, tmp_path_factory.mktemp("run"), tiny_preset(tiny_model_dir))


def test_loss_goes_down_on_a_learnable_mapping(trained: TrainResult) -> None:
    assert len(trained.losses) == 30
    first, last = sum(trained.losses[:5]) / 5, sum(trained.losses[-5:]) / 5
    assert last < 0.5 * first, trained.losses
    assert trained.eval_loss is not None and trained.eval_loss < 0.5 * first


def test_output_folder_holds_adapter_tokenizer_state_and_metrics(trained: TrainResult) -> None:
    out = trained.out_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 30
    assert state["final_loss"] == pytest.approx(trained.losses[-1])
    assert state["prompt_version"] == PROMPT_VERSION
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in records if "loss" in line]
    assert [line["step"] for line in lines] == list(range(1, 31))
    assert [line["loss"] for line in lines] == pytest.approx(trained.losses)
    assert [line["step"] for line in lines if "eval_loss" in line] == [10, 20, 30]
    # The conditioning probe of the finished adapter closes the log, and the state keeps it.
    assert records[-1]["step"] == 30 and "probe_js_model" in records[-1]
    assert state["probe"]["probe_ce_model"] == pytest.approx(records[-1]["probe_ce_model"])
    # How to serve it: the lines its targets hold, no history (the tiny preset has none).
    profile = ServingProfile.read(out)
    assert profile.fields == ("caption", "colors", "tones")
    assert not profile.retrieval and profile.behaviour == "discriminative"
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)


def test_outputs_are_safetensors_or_json_only(trained: TrainResult) -> None:
    files = [path for path in trained.out_dir.rglob("*") if path.is_file()]
    assert any(CHECKPOINTS in path.parts for path in files)
    for path in files:
        assert path.suffix in SAFE_SUFFIXES, path
        assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"


def test_interrupted_run_resumes_to_the_same_final_state(
    tiny_model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    config = tiny_preset(tiny_model_dir).model_copy(
        update={"max_steps": 10, "checkpoint_every": 4, "lora_dropout": 0.1}
    )
    straight = finetune(dataset_dir, tmp_path / "straight", config)

    class Interrupted(Exception):
        pass

    def stop_after_six(report: StepReport) -> None:
        if report.step == 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(dataset_dir, tmp_path / "resumed", config, progress=stop_after_six)
    resumed = finetune(dataset_dir, tmp_path / "resumed", config)

    assert resumed.resumed_from_step == 4
    assert len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(straight.losses[4:], rel=1e-4)
    expected = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    actual = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 11))


def test_resume_with_other_settings_is_refused(
    tiny_model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    config = tiny_preset(tiny_model_dir).model_copy(update={"max_steps": 3, "warmup_steps": 1})
    finetune(dataset_dir, tmp_path, config)
    with pytest.raises(ValueError, match="learning_rate"):
        finetune(dataset_dir, tmp_path, config.model_copy(update={"learning_rate": 1e-3}))


def test_resume_on_another_dataset_version_is_refused(
    tiny_model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    # A finished run "resumed" on a dataset folded with feedback would be published as
    # trained on it.
    config = tiny_preset(tiny_model_dir).model_copy(update={"max_steps": 3, "warmup_steps": 1})
    finetune(dataset_dir, tmp_path / "run", config)
    other = tmp_path / "other"
    shutil.copytree(resolve_dataset_dir(dataset_dir), other)
    manifest = other / "manifest.json"
    manifest.write_text(manifest.read_text().replace("{", '{"folded": true, ', 1))
    with pytest.raises(ValueError, match="another dataset version"):
        finetune(other, tmp_path / "run", config)


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    config = FinetuneConfig(
        base_model=Path("m"), learning_rate=1.0, warmup_steps=4, max_steps=20, min_lr_ratio=0.1
    )
    rates = [learning_rate_at(step, config) for step in range(20)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert learning_rate_at(20, config) == pytest.approx(0.1)


def test_target_only_loss_equals_the_models_own_loss(
    tiny_model_dir: Path, dataset_dir: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.finetune.data import collate, load_examples, prepare
    from services.trainer.finetune.train import _loss

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    prepared = prepare(load_examples(dataset_dir, "train"), tokenizer, max_seq_length=2048)
    rows = [items[0] for items in prepared.examples.values()] * 2  # padded rows of both kinds
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    pad_id = int(tokenizer.eos_token_id)
    batch = {key: torch.tensor(value) for key, value in collate(rows, pad_id).items()}

    ours = _loss(model, rows, pad_id, torch.device("cpu"))
    theirs = model(**batch, use_cache=False).loss
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
