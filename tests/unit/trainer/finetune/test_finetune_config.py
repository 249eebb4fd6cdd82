"""Fine-tuning hyper-parameters: presets validate, inconsistent settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.trainer.finetune.config import PRESETS, FinetuneConfig, cpu_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name: str) -> None:
    config = PRESETS[name](Path("model"))
    assert FinetuneConfig.model_validate(config.model_dump()) == config


def test_cpu_preset_is_the_converging_recipe_sized_for_two_cores() -> None:
    config = cpu_preset(Path("model"))
    assert config.batch_size == 8
    assert 80 <= config.max_steps <= 120  # x ~8 s per step: ~15 min, measured over a whole run
    assert config.retrieval and config.per_example_loss and config.balanced
    assert config.one_direction_per_batch and config.lora_layers == (18, 29)
    assert config.weight_words > config.weight_rgb > config.weight_decimals
    assert config.min_lr_ratio >= 0.5  # the schedule never decays to nothing


def test_warmup_must_end_before_the_last_step() -> None:
    with pytest.raises(ValidationError, match="warmup_steps"):
        FinetuneConfig(base_model=Path("m"), max_steps=5, warmup_steps=5)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        FinetuneConfig.model_validate({"base_model": "m", "learning_rat": 1.0})


def test_resume_fingerprint_ignores_only_when_to_stop_and_save() -> None:
    base = cpu_preset(Path("model"))
    longer = base.model_copy(update={"max_steps": 400, "checkpoint_every": 7})
    other_lr = base.model_copy(update={"learning_rate": 3e-3})
    assert longer.resume_fingerprint() == base.resume_fingerprint()
    assert other_lr.resume_fingerprint() != base.resume_fingerprint()
