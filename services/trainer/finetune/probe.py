"""The conditioning probe: in seconds, does BoigLLM's output depend on the brand and the level?

Greedy samples hide partial learning (a cell's top colour often has probability 0.2-0.5, so
a partly conditioned model still decodes the global mode), so the probe reads distributions:

- content: the teacher-forced distribution of the first colour name for each (account,
  level) cell, its mean Jensen-Shannon divergence between cells next to the data's own, and
  the cross-entropy of the true first colour next to the marginal and the cell priors;
- behaviour: level accuracy and Spearman against the normalized KPI, next to the majority
  class, for the discriminative reading (the level word) and the generative one (Bayes'
  rule through the content direction: P(description | context, level) x the level prior).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from services.common import prompts
from services.common.contracts import KPI_LEVELS, KpiLevel, KpiTarget
from services.common.history import HistoryStore
from services.common.verbalization import parse
from services.trainer.finetune.data import to_prompt_target
from services.trainer.ingest.dataset import InstructionExample

LEVEL_MIDPOINTS = {KpiLevel.LOW: 1 / 6, KpiLevel.MEDIUM: 0.5, KpiLevel.HIGH: 5 / 6}
"""Expected normalized KPI of each level (tertiles), for the Spearman of a distribution."""


@dataclass(frozen=True)
class ProbeResult:
    cells: int
    content_rows: int
    js_model: float
    """Mean JS divergence (bits) between the cells' mean first-colour distributions."""
    js_data: float
    """The same on the data's own first colours per cell (training split)."""
    ce_model: float
    """Mean -log P(true first colour), nats, over the probe's rows."""
    ce_marginal: float
    ce_cell_prior: float
    behaviour_rows: int
    accuracy_majority: float
    accuracy_discriminative: float | None
    spearman_discriminative: float | None
    accuracy_generative: float | None
    spearman_generative: float | None
    temperature: float
    seconds: float

    def record(self) -> dict[str, float | int | None]:
        return {f"probe_{key}": value for key, value in asdict(self).items()}

    def lines(self) -> list[str]:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        return [
            f"first colour over {self.cells} (account, level) cells, {self.content_rows} rows:",
            f"  JS between cells  model {self.js_model:.3f}   data {self.js_data:.3f}",
            f"  cross-entropy     model {self.ce_model:.3f}   marginal prior "
            f"{self.ce_marginal:.3f}   brand+level prior {self.ce_cell_prior:.3f}",
            f"level on {self.behaviour_rows} rows (majority class {self.accuracy_majority:.3f}):",
            f"  discriminative    accuracy {fmt(self.accuracy_discriminative)}   "
            f"Spearman {fmt(self.spearman_discriminative)}",
            f"  generative        accuracy {fmt(self.accuracy_generative)}   "
            f"Spearman {fmt(self.spearman_generative)}   (temperature {self.temperature:.2f})",
            f"  ({self.seconds:.1f} s)",
        ]


def first_color(example: InstructionExample) -> str | None:
    colors = parse(example.verbalization).colors
    return colors[0].name if colors else None


def stratified(
    examples: Sequence[InstructionExample], key: Any, count: int, seed: int
) -> list[InstructionExample]:
    """About ``count`` rows spread evenly over the groups ``key`` makes, drawn by the seed."""
    groups: dict[Hashable, list[InstructionExample]] = defaultdict(list)
    for example in examples:
        groups[key(example)].append(example)
    rng = random.Random(seed)
    per_group = max(1, count // max(1, len(groups)))
    chosen: list[InstructionExample] = []
    for name in sorted(groups, key=repr):
        pool = groups[name]
        chosen.extend(rng.sample(pool, min(per_group, len(pool))))
    return chosen


@dataclass
class Probe:
    """Rows and priors fixed once per run; ``run`` measures a model on them."""

    content: list[InstructionExample]
    behaviour: list[InstructionExample]
    train: list[InstructionExample]
    """Training content examples: the priors and the data's own divergence."""
    history: HistoryStore | None
    leave_out: bool
    """The probe's rows are part of ``history`` (validation rows of the training split)."""
    few_shot: bool = False
    batch_size: int = 8

    @classmethod
    def build(
        cls,
        content: Sequence[InstructionExample],
        behaviour: Sequence[InstructionExample],
        train: Sequence[InstructionExample],
        *,
        history: HistoryStore | None,
        leave_out: bool,
        rows: int,
        seed: int = 0,
        few_shot: bool = False,
    ) -> Probe:
        return cls(
            content=stratified(content, lambda e: (e.context.account, e.level), rows, seed),
            behaviour=stratified(behaviour, lambda e: e.level, rows, seed),
            train=list(train),
            history=history,
            leave_out=leave_out,
            few_shot=few_shot,
        )

    # --- content ------------------------------------------------------------------------

    def run(
        self,
        model: Any,
        tokenizer: Any,
        *,
        temperature: float | None = 1.0,
        generative: bool = True,
    ) -> ProbeResult:
        """Measure ``model``. ``generative`` (needs a history) costs ~3 forward passes of a
        description per behaviour row, the bulk of the probe: runs leave it to their end.
        ``temperature`` None: fit it on these rows (the run's validation rows)."""
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                content = self._first_colours(model, tokenizer)
                behaviour, fitted = self._levels(model, tokenizer, temperature, generative)
        finally:
            if was_training:
                model.train()
        return ProbeResult(
            **content, **behaviour, temperature=fitted, seconds=time.perf_counter() - started
        )

    def _vocabulary(self, tokenizer: Any) -> dict[str, int]:
        """Colour name -> the token that starts it after ``colors:`` (names sharing a first
        token are read as the most frequent of them)."""
        counts = Counter(name for e in self.train if (name := first_color(e)) is not None)
        vocabulary: dict[str, int] = {}
        taken: set[int] = set()
        for name, _ in counts.most_common():
            token = tokenizer(" " + name, add_special_tokens=False)["input_ids"][0]
            if token not in taken:
                vocabulary[name] = int(token)
                taken.add(int(token))
        return vocabulary

    def _first_colours(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        vocabulary = self._vocabulary(tokenizer)
        names = list(vocabulary)
        token_ids = torch.tensor([vocabulary[n] for n in names])
        rows = [e for e in self.content if first_color(e) in vocabulary]
        # The distribution right after "colors:" at the start of the answer: the world's
        # descriptions start there. A caption line before it would carry the row's own
        # words into the prefix, so it is never teacher-forced.
        texts = [self._prompt(example, tokenizer) + "colors:" for example in rows]
        distributions = np.zeros((len(rows), len(names)))
        for start in range(0, len(texts), self.batch_size):
            logits = _last_logits(model, tokenizer, texts[start : start + self.batch_size])
            chosen = logits[:, token_ids].float().log_softmax(-1).exp()
            distributions[start : start + len(chosen)] = chosen.numpy()
        cells: dict[Hashable, list[int]] = defaultdict(list)
        for index, example in enumerate(rows):
            cells[example.context.account, example.level].append(index)
        model_cells = {cell: distributions[idx].mean(0) for cell, idx in cells.items()}
        truth = [names.index(first_color(e) or "") for e in rows]
        marginal = _frequencies([first_color(e) for e in self.train], names)
        by_cell: dict[Hashable, list[str | None]] = defaultdict(list)
        for example in self.train:
            by_cell[example.context.account, example.level].append(first_color(example))
        cell_prior = {cell: _frequencies(values, names) for cell, values in by_cell.items()}
        data_cells = {cell: cell_prior[cell] for cell in model_cells if cell in cell_prior}
        ce_model = -float(
            np.mean([math.log(max(distributions[i, t], 1e-12)) for i, t in enumerate(truth)])
        )
        ce_marginal = -float(np.mean([math.log(marginal[t]) for t in truth]))
        ce_cell = -float(
            np.mean(
                [
                    math.log(cell_prior.get((e.context.account, e.level), marginal)[t])
                    for e, t in zip(rows, truth, strict=True)
                ]
            )
        )
        return {
            "cells": len(model_cells),
            "content_rows": len(rows),
            "js_model": mean_pairwise_js(list(model_cells.values())),
            "js_data": mean_pairwise_js(list(data_cells.values())),
            "ce_model": ce_model,
            "ce_marginal": ce_marginal,
            "ce_cell_prior": ce_cell,
        }

    def _prompt(self, example: InstructionExample, tokenizer: Any) -> str:
        """The prompt the trainer trains on and the describer serves for ``example``."""
        return to_prompt_target(
            example,
            tokenizer,
            few_shot=self.few_shot,
            history=self.history,
            leave_out=self.leave_out,
        ).prompt

    # --- behaviour ----------------------------------------------------------------------

    def _levels(
        self, model: Any, tokenizer: Any, temperature: float | None, generative: bool
    ) -> tuple[dict[str, Any], float]:
        rows = self.behaviour
        truth = [e.level for e in rows]
        majority = Counter(e.level for e in self.train).most_common(1)[0][0]
        result: dict[str, Any] = {
            "behaviour_rows": len(rows),
            "accuracy_majority": float(np.mean([t is majority for t in truth])) if rows else 0.0,
            "accuracy_discriminative": None,
            "spearman_discriminative": None,
            "accuracy_generative": None,
            "spearman_generative": None,
        }
        if not rows:
            return result, temperature or 1.0
        discriminative = self.discriminative_logprobs(model, tokenizer)
        result["accuracy_discriminative"], result["spearman_discriminative"] = _score(
            discriminative, rows
        )
        if self.history is None or not generative:
            return result, temperature or 1.0
        likelihoods = self.generative_loglikelihoods(model, tokenizer)
        priors = self.level_priors()
        if temperature is None:
            # Judged cross-fitted (each half scored with the temperature fitted on the
            # other), served with the temperature fitted on all of them.
            posterior = cross_fitted_posterior(likelihoods, priors, truth)
            temperature = fit_temperature(likelihoods, priors, truth)
        else:
            posterior = generative_posterior(likelihoods, priors, temperature)
        result["accuracy_generative"], result["spearman_generative"] = _score(posterior, rows)
        return result, temperature

    def discriminative_logprobs(self, model: Any, tokenizer: Any) -> np.ndarray:
        """(rows, levels) log P(level word | behaviour prompt), renormalized over levels."""
        level_tokens = [
            tokenizer(prompts.level_continuation(level), add_special_tokens=False)["input_ids"][0]
            for level in KPI_LEVELS
        ]
        texts = [self._prompt(example, tokenizer) for example in self.behaviour]
        out = np.zeros((len(texts), len(KPI_LEVELS)))
        for start in range(0, len(texts), self.batch_size):
            logits = _last_logits(model, tokenizer, texts[start : start + self.batch_size])
            chosen = logits[:, level_tokens].float().log_softmax(-1)
            out[start : start + len(chosen)] = chosen.numpy()
        return out

    def generative_loglikelihoods(self, model: Any, tokenizer: Any) -> np.ndarray:
        """(rows, levels) log P(description | content prompt at the level, with that level's
        history line): the summed log-probabilities of the description's tokens."""
        pairs = []
        for example in self.behaviour:
            look = parse(example.verbalization) if self.leave_out else None
            for level in KPI_LEVELS:
                line = (
                    self.history.line(
                        example.context.account,
                        example.kpi_name,
                        level,
                        leave_out=look if level is example.level else None,
                    )
                    if self.history is not None
                    else None
                )
                messages = prompts.describe_messages(
                    example.context,
                    KpiTarget(name=example.kpi_name, level=level),
                    few_shot=self.few_shot,
                    history=line,
                )
                pairs.append((prompts.chat_prompt(tokenizer, messages), example.verbalization))
        sums = continuation_logprob_sums(model, tokenizer, pairs, self.batch_size)
        return np.array(sums).reshape(len(self.behaviour), len(KPI_LEVELS))

    def level_priors(self) -> np.ndarray:
        """(rows, levels): each row's account's level frequencies (Laplace), from history."""
        priors = []
        for example in self.behaviour:
            counts = (
                self.history.level_posts(example.context.account, example.kpi_name)
                if self.history is not None
                else dict.fromkeys(KPI_LEVELS, 0)
            )
            if self.leave_out:
                counts[example.level] -= 1
            total = sum(counts.values()) + len(KPI_LEVELS)
            priors.append([(counts[level] + 1) / total for level in KPI_LEVELS])
        result: np.ndarray = np.log(np.array(priors))
        return result


def generative_posterior(
    loglikelihoods: np.ndarray, log_priors: np.ndarray, temperature: float
) -> np.ndarray:
    """log P(level | description) ∝ log P(description | level) / T + log P(level)."""
    logits = loglikelihoods / temperature + log_priors
    posterior: np.ndarray = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return posterior


def fit_temperature(
    loglikelihoods: np.ndarray, log_priors: np.ndarray, truth: Sequence[KpiLevel]
) -> float:
    """The temperature minimizing the negative log-likelihood of the true levels (a grid on a
    log scale: one parameter, no optimizer needed)."""
    index = [KPI_LEVELS.index(level) for level in truth]
    best, best_nll = 1.0, math.inf
    for temperature in np.geomspace(0.25, 64.0, 49):
        posterior = generative_posterior(loglikelihoods, log_priors, float(temperature))
        nll = -float(np.mean(posterior[np.arange(len(index)), index]))
        if nll < best_nll:
            best, best_nll = float(temperature), nll
    return best


def cross_fitted_posterior(
    loglikelihoods: np.ndarray, log_priors: np.ndarray, truth: Sequence[KpiLevel]
) -> np.ndarray:
    """Two-fold: the posterior of each alternate row with the temperature fitted on the other
    rows, so that the rows judging the generative reading never fitted its one parameter."""
    posterior = np.zeros_like(loglikelihoods)
    index = np.arange(len(truth))
    for fold in (0, 1):
        fit_rows, judged = index[index % 2 != fold], index[index % 2 == fold]
        if len(fit_rows) == 0:
            fit_rows = judged
        temperature = fit_temperature(
            loglikelihoods[fit_rows], log_priors[fit_rows], [truth[i] for i in fit_rows]
        )
        posterior[judged] = generative_posterior(
            loglikelihoods[judged], log_priors[judged], temperature
        )
    return posterior


def _score(
    log_posterior: np.ndarray, rows: Sequence[InstructionExample]
) -> tuple[float, float | None]:
    predicted = log_posterior.argmax(1)
    accuracy = float(
        np.mean([KPI_LEVELS[p] is e.level for p, e in zip(predicted, rows, strict=True)])
    )
    midpoints = np.array([LEVEL_MIDPOINTS[level] for level in KPI_LEVELS])
    expected = np.exp(log_posterior) @ midpoints
    truth = [e.percentile for e in rows]
    if len(set(expected.round(9))) < 2 or len(set(truth)) < 2:
        return accuracy, None
    return accuracy, float(spearmanr(expected, truth).statistic)


def _frequencies(values: Sequence[str | None], names: list[str]) -> np.ndarray:
    counts = Counter(v for v in values if v is not None)
    smoothed = np.array([counts[name] + 0.5 for name in names], dtype=float)
    result: np.ndarray = smoothed / smoothed.sum()
    return result


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = same, 1 = disjoint)."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def mean_pairwise_js(distributions: Sequence[np.ndarray]) -> float:
    pairs = [
        js_divergence(a, b) for i, a in enumerate(distributions) for b in distributions[i + 1 :]
    ]
    return float(np.mean(pairs)) if pairs else 0.0


# --- model plumbing ---------------------------------------------------------------------------


def _encode_batch(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def _hidden(model: Any, rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded forward: the last hidden states and the attention mask."""
    from services.trainer.finetune.train import decoder_and_head

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    parts = decoder_and_head(model)
    if parts is None:
        raise ValueError("the probe needs a model whose logits are its output projection")
    decoder, _ = parts
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return hidden, mask


def _last_logits(model: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    from services.trainer.finetune.train import decoder_and_head

    rows = _encode_batch(tokenizer, texts)
    hidden, mask = _hidden(model, rows, _pad_id(tokenizer))
    last = mask.sum(1) - 1
    parts = decoder_and_head(model)
    assert parts is not None
    _, head = parts
    logits: torch.Tensor = head(hidden[torch.arange(len(rows)), last]).float().cpu()
    return logits


def continuation_logprob_sums(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int
) -> list[float]:
    """Summed log P(continuation tokens | prompt) for each (prompt, continuation), with the
    two encoded together as the describer scores them."""
    return [total for total, _ in continuation_logprobs(model, tokenizer, pairs, batch_size)]


def continuation_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int
) -> list[tuple[float, int]]:
    """(summed log P(continuation tokens | prompt), how many tokens) for each pair."""
    from services.trainer.finetune.train import decoder_and_head

    parts = decoder_and_head(model)
    assert parts is not None
    _, head = parts
    sums: list[tuple[float, int]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows, spans = [], []
        for prompt, continuation in chunk:
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            joint = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
            shared = 0
            for a, b in zip(prompt_ids, joint, strict=False):
                if a != b:
                    break
                shared += 1
            rows.append(joint)
            spans.append(max(1, shared))
        hidden, _ = _hidden(model, rows, _pad_id(tokenizer))
        for index, (row, shared) in enumerate(zip(rows, spans, strict=True)):
            positions = torch.arange(shared - 1, len(row) - 1)
            targets = torch.tensor(row[shared:], device=hidden.device)
            logprobs = head(hidden[index, positions]).float().log_softmax(-1)
            total = float(logprobs[torch.arange(len(targets)), targets].sum())
            sums.append((total, len(targets)))
    return sums


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


__all__ = [
    "Probe",
    "ProbeResult",
    "continuation_logprob_sums",
    "continuation_logprobs",
    "fit_temperature",
    "generative_posterior",
    "js_divergence",
    "mean_pairwise_js",
]
