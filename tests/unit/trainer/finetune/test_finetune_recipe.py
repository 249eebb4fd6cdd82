"""The converging recipe's parts on hand-made cases: token kinds and weights, the per-example
loss, the balanced one-direction sampler, retrieval prompts with leave-one-out, the probe."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.contracts import KPI_LEVELS, KpiLevel
from services.common.verbalization import parse
from services.trainer.finetune.data import (
    IGNORE_INDEX,
    PromptTarget,
    TokenKind,
    TokenWeights,
    batch_schedule,
    character_kinds,
    load_examples,
    to_prompt_target,
    tokenize,
)
from services.trainer.finetune.probe import (
    Probe,
    fit_temperature,
    generative_posterior,
    js_divergence,
    mean_pairwise_js,
)
from services.trainer.finetune.train import weighted_mean
from services.trainer.ingest.dataset import Direction, history_of

DESCRIPTION = (
    "caption: a red shoe\n"
    "colors: red (200,20,30) 60%; light blue (10,20,250) 5%\n"
    "tones: warm, high-contrast\n"
    "objects: star 0.91 [0.10,0.20,0.30,0.40]"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def _spans(kinds: list[TokenKind], kind: TokenKind) -> list[str]:
    """The maximal runs of characters of one kind."""
    runs, current = [], ""
    for char, k in zip(DESCRIPTION, kinds, strict=True):
        if k is kind:
            current += char
        elif current:
            runs.append(current)
            current = ""
    return runs + ([current] if current else [])


def test_character_kinds_find_the_look_and_the_noise() -> None:
    kinds = character_kinds(DESCRIPTION)
    assert _spans(kinds, TokenKind.WORD) == ["red", "light blue", "warm", "high-contrast", "star"]
    assert _spans(kinds, TokenKind.RGB) == ["200,20,30", "10,20,250"]
    assert _spans(kinds, TokenKind.COVERAGE) == ["60%", "5%"]
    assert _spans(kinds, TokenKind.DECIMAL) == ["0.91", "[0.10,0.20,0.30,0.40]"]
    # The caption and the keys are plain text.
    assert kinds[DESCRIPTION.index("shoe")] is TokenKind.OTHER
    assert kinds[DESCRIPTION.index("colors")] is TokenKind.OTHER


def test_token_weights_follow_what_each_target_token_spells(tokenizer: Any) -> None:
    pair = PromptTarget(Direction.CONTENT, "<|im_start|>assistant\n", DESCRIPTION)
    weights = TokenWeights(word=3.0, rgb=1.0, coverage=0.3, decimal=0.1)
    tokenized = tokenize(pair, tokenizer, weights)
    by_weight: dict[float, str] = {}
    for token, label, weight in zip(
        tokenized.input_ids, tokenized.labels, tokenized.weights, strict=True
    ):
        if label == IGNORE_INDEX:
            assert weight == 0.0
            continue
        by_weight[weight] = by_weight.get(weight, "") + tokenizer.decode([token])
    assert "red" in by_weight[3.0] and "star" in by_weight[3.0]
    assert "shoe" not in by_weight[3.0]
    assert "0.91" in by_weight[0.1].replace(" ", "")
    assert "60%" in by_weight[0.3].replace(" ", "")
    # The end-of-turn token keeps weight 1 with the rest of the structure.
    assert tokenized.weights[-1] == 1.0


def test_a_behaviour_target_is_the_level_word_alone(tokenizer: Any, dataset_dir: Path) -> None:
    example = load_examples(dataset_dir, "train")[Direction.BEHAVIOUR][0]
    tokenized = tokenize(to_prompt_target(example, tokenizer), tokenizer)
    targets = [t for t in tokenized.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(targets).strip() == example.level.value
    assert tokenizer.eos_token_id not in targets


def test_per_example_loss_averages_within_then_across_examples() -> None:
    losses = torch.tensor([1.0, 1.0, 1.0, 4.0])
    row_of = torch.tensor([0, 0, 0, 1])
    ones = torch.ones(4)
    # Token mean: a 3-token row outweighs a 1-token row three to one.
    assert float(weighted_mean(losses, ones, row_of, 2, per_example=False)) == pytest.approx(1.75)
    assert float(weighted_mean(losses, ones, row_of, 2, per_example=True)) == pytest.approx(2.5)
    # Weights share the loss within a row; a row whose weights are all 0 is left out.
    weights = torch.tensor([3.0, 1.0, 0.0, 0.0])
    losses = torch.tensor([2.0, 6.0, 9.0, 9.0])
    assert float(weighted_mean(losses, weights, row_of, 2, per_example=True)) == pytest.approx(3.0)


def test_balanced_sampling_sees_a_rare_cell_as_often_as_a_common_one() -> None:
    cells = ["common"] * 90 + ["rare"] * 10
    behaviour_cells = ["low"] * 5 + ["high"] * 45
    schedule = batch_schedule(
        {Direction.CONTENT: 100, Direction.BEHAVIOUR: 50},
        content_fraction=0.75,
        batch_size=4,
        steps=400,
        seed=1,
        cells={Direction.CONTENT: cells, Direction.BEHAVIOUR: behaviour_cells},
        one_direction_per_batch=True,
    )
    assert all(len({direction for direction, _ in batch}) == 1 for batch in schedule)
    content = Counter(cells[i] for batch in schedule for d, i in batch if d is Direction.CONTENT)
    behaviour = Counter(
        behaviour_cells[i] for batch in schedule for d, i in batch if d is Direction.BEHAVIOUR
    )
    assert abs(content["common"] - content["rare"]) <= 1
    assert abs(behaviour["low"] - behaviour["high"]) <= 1
    content_batches = sum(batch[0][0] is Direction.CONTENT for batch in schedule)
    assert 0.65 < content_batches / len(schedule) < 0.85
    # Within the rare cell every example comes up before any repeats.
    rare = [i for batch in schedule for d, i in batch if d is Direction.CONTENT and i >= 90]
    assert sorted(rare[:10]) == list(range(90, 100))


def test_retrieval_prompts_carry_the_history_without_the_row_itself(
    tokenizer: Any, dataset_dir: Path
) -> None:
    train = load_examples(dataset_dir, "train")
    history = history_of(train[Direction.CONTENT])
    example = train[Direction.CONTENT][0]
    alone = history_of([example])
    with_row = to_prompt_target(example, tokenizer, history=history, leave_out=False)
    without_row = to_prompt_target(example, tokenizer, history=history, leave_out=True)
    assert "history at this level: colors red (200,20,30)" in with_row.prompt
    # Every alpha post looks the same: leaving one out changes nothing a prompt shows.
    assert with_row.prompt == without_row.prompt
    alone_line = alone.line(example.context.account, "likes", example.level)
    assert (
        alone.line(
            example.context.account, "likes", example.level, leave_out=parse(example.verbalization)
        )
        is None
        and alone_line is not None
    )
    assert with_row.prompt.index("history at") < with_row.prompt.index("goal: high likes")
    behaviour = to_prompt_target(
        train[Direction.BEHAVIOUR][0], tokenizer, history=history, leave_out=True
    )
    # The account has posts at one level only: one line, naming it.
    assert behaviour.prompt.count("history at ") == 1
    assert "history at high level" in behaviour.prompt


def test_js_divergence_and_its_pairwise_mean() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert js_divergence(a, a) == pytest.approx(0.0)
    assert js_divergence(a, b) == pytest.approx(1.0)
    assert mean_pairwise_js([a, b, a]) == pytest.approx(2 / 3)


def test_fit_temperature_tempers_over_confident_likelihoods() -> None:
    rng = np.random.default_rng(0)
    truth = [KPI_LEVELS[i % 3] for i in range(300)]
    # Likelihoods that point at the truth 60% of the time, with huge margins.
    loglik = np.zeros((300, 3))
    for row, level in enumerate(truth):
        pick = KPI_LEVELS.index(level) if rng.random() < 0.6 else int(rng.integers(3))
        loglik[row, pick] = 40.0
    priors = np.log(np.full((300, 3), 1 / 3))
    temperature = fit_temperature(loglik, priors, truth)
    assert temperature > 10.0
    posterior = np.exp(generative_posterior(loglik, priors, temperature))
    assert 0.5 < posterior.max(1).mean() < 0.9


def test_probe_reads_distributions_from_a_tiny_model(
    tiny_model_dir: Path, dataset_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    train = load_examples(dataset_dir, "train")
    test = load_examples(dataset_dir, "test")
    probe = Probe.build(
        test[Direction.CONTENT],
        test[Direction.BEHAVIOUR],
        train[Direction.CONTENT],
        history=history_of(train[Direction.CONTENT]),
        leave_out=False,
        rows=6,
    )
    result = probe.run(model, tokenizer, temperature=2.0)
    assert result.cells == 3 and result.content_rows == 6
    # Each account has one first colour: disjoint cells (JS 1 bit before the +0.5 smoothing).
    assert result.js_data > 0.5
    assert 0.0 <= result.js_model <= 1.0
    assert np.isfinite(result.ce_model) and result.ce_cell_prior < result.ce_marginal
    assert result.behaviour_rows == 6
    assert result.accuracy_discriminative is not None
    assert result.accuracy_generative is not None
    assert result.temperature == 2.0
    assert any("JS between cells" in line for line in result.lines())
    assert set(KPI_LEVELS) == set(KpiLevel)
