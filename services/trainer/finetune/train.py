"""LoRA fine-tuning of BoigLLM on both directions, with step logs and resumable checkpoints.

Everything written is safetensors (tensors) or JSON (scalars): a checkpoint can be loaded
without running pickled code, and its files diff and inspect with ordinary tools.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common import prompts
from services.common.prompts import PROMPT_VERSION
from services.common.serving_profile import ServingProfile
from services.common.torch_device import resolve_device, resolve_dtype
from services.trainer.finetune.config import FinetuneConfig
from services.trainer.finetune.data import (
    IGNORE_INDEX,
    PreparedSplit,
    TokenizedExample,
    TokenWeights,
    batch_schedule,
    collate,
    collate_weights,
    dataset_digest,
    load_examples,
    prepare,
    resolve_dataset_dir,
)
from services.trainer.finetune.probe import Probe, ProbeResult
from services.trainer.ingest.dataset import MANIFEST, Direction, InstructionExample, history_of
from services.trainer.training_state import (
    optimizer_from_safe,
    optimizer_to_safe,
    warmup_cosine_rate,
)

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_STATE = "optimizer.safetensors"
TRAIN_STATE = "train_state.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
_CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class StepReport:
    step: int
    """Optimizer steps done so far (1 after the first)."""
    max_steps: int
    loss: float
    learning_rate: float


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int
    resumed_from_step: int
    """0 for a fresh run, else the checkpoint step this run continued from."""
    final_loss: float
    """Training loss of the last step (mean over that batch's target tokens)."""
    eval_loss: float | None
    losses: list[float]
    """Training loss of each step this run took (after resumed_from_step)."""
    skipped_too_long: int
    seconds: float
    probe: ProbeResult | None = None
    """The conditioning probe on validation rows at the end of the run."""
    profile: ServingProfile | None = None


Progress = Callable[[StepReport], None]


def finetune(
    dataset_dir: Path,
    out_dir: Path,
    config: FinetuneConfig,
    *,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``dataset_dir`` into ``out_dir``; resume if it has checkpoints.

    ``progress`` is called after every step; an exception it raises stops the run, which a
    later call with the same out_dir resumes from the newest checkpoint.
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device, bf16_on_capable_cpu=True)
    tokenizer: Any = AutoTokenizer.from_pretrained(str(config.base_model), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base: Any = AutoModelForCausalLM.from_pretrained(
        str(config.base_model), local_files_only=True, dtype=dtype
    )
    base.config.use_cache = False
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    raw_train = load_examples(dataset_dir, "train")
    history = history_of(raw_train[Direction.CONTENT]) if config.retrieval else None
    fitting, validation = split_validation(raw_train, config)
    # Every row of the training split is one of the history's posts: each is left out of
    # its own history, validation rows included.
    train, validation_prepared = (
        prepare(
            split,
            tokenizer,
            max_seq_length=config.max_seq_length,
            few_shot=config.few_shot_prompt,
            history=history,
            leave_out=True,
            weights=token_weights(config),
        )
        for split in (fitting, validation)
    )
    test = _eval_examples(validation_prepared, config)
    probe = Probe.build(
        validation[Direction.CONTENT],
        validation[Direction.BEHAVIOUR],
        fitting[Direction.CONTENT],
        history=history,
        leave_out=True,
        rows=config.probe_rows,
        seed=config.seed,
        few_shot=config.few_shot_prompt,
    )
    sizes = {direction: len(items) for direction, items in train.examples.items()}
    schedule = batch_schedule(
        sizes,
        content_fraction=config.content_fraction,
        batch_size=config.batch_size,
        steps=config.max_steps,
        seed=config.seed,
        cells=_cells(train) if config.balanced else None,
        one_direction_per_batch=config.one_direction_per_batch,
    )
    if train.skipped_too_long:
        logger.warning(
            "skipped %d training examples longer than %d tokens",
            train.skipped_too_long,
            config.max_seq_length,
        )

    torch.manual_seed(config.seed)  # the LoRA A matrices are drawn here
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        layers_to_transform=(
            list(range(config.lora_layers[0], config.lora_layers[1] + 1))
            if config.lora_layers is not None
            else None
        ),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft 0.21 probes a transformers attribute that transformers 5 deprecated; harmless.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model: Any = get_peft_model(base, lora).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )

    start_step = 0
    version_dir = resolve_dataset_dir(dataset_dir)
    # None: a dataset without a manifest (load_examples reads those too) is not told apart.
    data_digest = dataset_digest(version_dir) if (version_dir / MANIFEST).is_file() else None
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        start_step = _restore(checkpoint, model, optimizer, config, data_digest)
        logger.info("resuming from %s (step %d)", checkpoint, start_step)
    _truncate_metrics(out_dir / METRICS, start_step)

    pad_id = int(tokenizer.pad_token_id)
    losses: list[float] = []
    loss_value = math.nan
    eval_loss: float | None = None
    model.train()
    with (out_dir / METRICS).open("a", encoding="utf-8") as metrics:
        if start_step == 0 and config.probe_every:
            # Step 0: what the base model already does with these prompts.
            _log_probe(metrics, 0, probe.run(model, tokenizer, generative=False))
        for step in range(start_step + 1, config.max_steps + 1):
            step_started = time.perf_counter()
            lr = learning_rate_at(step - 1, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Dropout masks depend on (seed, step) only, so a resumed run draws the same ones.
            torch.manual_seed(config.seed * 1_000_003 + step)
            rows = [train.examples[direction][index] for direction, index in schedule[step - 1]]
            loss = _loss(model, rows, pad_id, device, per_example=config.per_example_loss)
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
            losses.append(loss_value)
            record: dict[str, Any] = {
                "step": step,
                "loss": loss_value,
                "learning_rate": lr,
                "grad_norm": float(grad_norm),
                "seconds": round(time.perf_counter() - step_started, 4),
            }
            last = step == config.max_steps
            if config.eval_every and test and (step % config.eval_every == 0 or last):
                eval_loss = evaluate(
                    model, test, pad_id, device, config.batch_size, config.per_example_loss
                )
                record["eval_loss"] = eval_loss
            if config.probe_every and step % config.probe_every == 0 and not last:
                record.update(probe.run(model, tokenizer, generative=False).record())
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            logger.debug("step %d loss %.4f lr %.2e", step, loss_value, lr)
            if step % config.checkpoint_every == 0 or last:
                _save_checkpoint(out_dir, step, model, optimizer, config, loss_value, data_digest)
            if progress is not None:
                progress(StepReport(step, config.max_steps, loss_value, lr))

    if start_step >= config.max_steps:  # nothing left to run: report the saved state
        state = json.loads(
            (out_dir / CHECKPOINTS / _step_name(start_step) / TRAIN_STATE).read_text()
        )
        loss_value = float(state["loss"])
        eval_loss = state.get("eval_loss")
    profile, final_probe = choose_serving(
        model, tokenizer, probe, config, description_fields(raw_train[Direction.CONTENT])
    )
    with (out_dir / METRICS).open("a", encoding="utf-8") as metrics:
        _log_probe(metrics, config.max_steps, final_probe)
    for line in final_probe.lines():
        logger.info("probe: %s", line)
    seconds = time.perf_counter() - started
    _write_outputs(
        out_dir,
        model,
        tokenizer,
        config,
        dataset_dir=dataset_dir,
        step=config.max_steps,
        final_loss=loss_value,
        eval_loss=eval_loss,
        skipped=train.skipped_too_long,
        profile=profile,
        probe=final_probe,
    )
    return TrainResult(
        out_dir=out_dir,
        steps=config.max_steps,
        resumed_from_step=start_step,
        final_loss=loss_value,
        eval_loss=eval_loss,
        losses=losses,
        skipped_too_long=train.skipped_too_long,
        seconds=seconds,
        probe=final_probe,
        profile=profile,
    )


def learning_rate_at(step: int, config: FinetuneConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio x peak at max_steps."""
    return warmup_cosine_rate(
        step,
        peak=config.learning_rate,
        warmup_steps=config.warmup_steps,
        total_steps=config.max_steps,
        floor_ratio=config.min_lr_ratio,
    )


def _loss(
    model: Any,
    rows: list[TokenizedExample],
    pad_id: int,
    device: torch.device,
    *,
    per_example: bool = False,
) -> torch.Tensor:
    """Weighted cross-entropy over the target tokens (labels -100 skipped): one mean over the
    batch's tokens, or with ``per_example`` the mean within each row, then over rows."""
    batch = {
        key: torch.tensor(value, dtype=torch.long, device=device)
        for key, value in collate(rows, pad_id).items()
    }
    weights = torch.tensor(collate_weights(rows), dtype=torch.float32, device=device)[:, 1:]
    labels = batch["labels"][:, 1:]
    targets = labels != IGNORE_INDEX
    parts = decoder_and_head(model)
    if parts is None:
        output = model(**batch, use_cache=False)
        logits = output.logits[:, :-1][targets]
    else:
        # Only target positions need logits: projecting every prompt position onto the
        # 49k-word vocabulary was ~40% of a CPU step for SmolLM2, and a behaviour example's
        # target is 1 token of ~230.
        decoder, head = parts
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        logits = head(hidden[:, :-1][targets])
    losses = torch.nn.functional.cross_entropy(logits.float(), labels[targets], reduction="none")
    return weighted_mean(losses, weights[targets], targets.nonzero()[:, 0], len(rows), per_example)


def weighted_mean(
    losses: torch.Tensor,
    weights: torch.Tensor,
    row_of: torch.Tensor,
    rows: int,
    per_example: bool,
) -> torch.Tensor:
    """sum(w * loss) / sum(w) over all tokens, or per row first (rows whose weights sum to 0
    are left out), then the plain mean over rows."""
    if not per_example:
        return (weights * losses).sum() / weights.sum().clamp_min(1e-12)
    totals = torch.zeros(rows, device=losses.device).index_add(0, row_of, weights * losses)
    mass = torch.zeros(rows, device=losses.device).index_add(0, row_of, weights)
    counted = mass > 0
    return (totals[counted] / mass[counted]).mean()


def decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """The backbone and output projection of a (PEFT-wrapped) causal LM, or None where the
    model transforms its logits beyond the projection (soft-capping, scaling), for which only
    its own forward computes the right loss."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = causal.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    try:
        decoder, head = causal.get_decoder(), causal.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None:
        return None
    return decoder, head


def evaluate(
    model: Any,
    examples: list[TokenizedExample],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    per_example: bool = False,
) -> float:
    """The training loss over ``examples`` (per target token, or per example), in eval mode
    (no dropout)."""
    was_training = model.training
    model.eval()
    total, mass = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            rows = examples[start : start + batch_size]
            count = (
                float(len(rows))
                if per_example
                else sum(sum(row.weights) if row.weights else 1.0 for row in rows)
            )
            loss = _loss(model, rows, pad_id, device, per_example=per_example)
            total += float(loss) * count
            mass += count
    if was_training:
        model.train()
    return total / max(1e-12, mass)


def split_validation(
    examples: dict[Direction, list[InstructionExample]], config: FinetuneConfig
) -> tuple[dict[Direction, list[InstructionExample]], dict[Direction, list[InstructionExample]]]:
    """(fitting, validation): a seeded set of posts, both of whose directions are held out of
    training, for the validation loss and the probe. The test split stays unread."""
    wanted = max(config.eval_examples, 2 * config.probe_rows)
    ids = sorted({e.id for items in examples.values() for e in items})
    held = set(random.Random(config.seed + 7).sample(ids, min(len(ids) // 5, wanted)))
    fitting = {d: [e for e in items if e.id not in held] for d, items in examples.items()}
    validation = {d: [e for e in items if e.id in held] for d, items in examples.items()}
    return fitting, validation


def token_weights(config: FinetuneConfig) -> TokenWeights:
    return TokenWeights(
        word=config.weight_words,
        rgb=config.weight_rgb,
        coverage=config.weight_coverage,
        decimal=config.weight_decimals,
    )


def _cells(split: PreparedSplit) -> dict[Direction, Sequence[Hashable]]:
    return {direction: [e.cell for e in items] for direction, items in split.examples.items()}


def _eval_examples(validation: PreparedSplit, config: FinetuneConfig) -> list[TokenizedExample]:
    if not config.eval_every:
        return []
    prepared = validation.examples
    content = round(config.eval_examples * config.content_fraction)
    return (
        prepared[Direction.CONTENT][:content]
        + prepared[Direction.BEHAVIOUR][: config.eval_examples - content]
    )


def _log_probe(metrics: Any, step: int, result: ProbeResult) -> None:
    metrics.write(json.dumps({"step": step, **result.record()}) + "\n")
    metrics.flush()


def description_fields(examples: Sequence[InstructionExample]) -> tuple[str, ...]:
    """The description lines the training targets hold, in the describer's order (a line
    too rare to matter, under 5% of the targets, is left out)."""
    counts = {
        key: sum(
            any(line.startswith(f"{key}: ") for line in e.verbalization.split("\n"))
            for e in examples
        )
        for key in prompts.DESCRIBE_FIELDS
    }
    return tuple(key for key in prompts.DESCRIBE_FIELDS if counts[key] >= 0.05 * len(examples))


def choose_serving(
    model: Any,
    tokenizer: Any,
    probe: Probe,
    config: FinetuneConfig,
    fields: tuple[str, ...] = (),
) -> tuple[ServingProfile, ProbeResult]:
    """The serving profile of the finished adapter and its probe: with retrieval, the
    generative reading's temperature is fitted on the validation rows, and ``auto`` serves
    whichever reading has the higher level accuracy there."""
    # The generative reading's temperature is fitted on the same validation rows.
    result = probe.run(model, tokenizer, temperature=None, generative=config.retrieval)
    temperature = result.temperature
    scoring = config.behaviour_scoring
    if scoring == "auto":
        generative = result.accuracy_generative
        discriminative = result.accuracy_discriminative or 0.0
        scoring = (
            "generative"
            if generative is not None and generative > discriminative
            else "discriminative"
        )
    if scoring == "generative" and not config.retrieval:
        raise ValueError("generative behaviour scoring needs retrieval-augmented prompts")
    profile = ServingProfile(
        retrieval=config.retrieval, behaviour=scoring, temperature=temperature, fields=fields
    )
    return profile, result


# --- checkpoints -----------------------------------------------------------------------------


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (its train_state.json is written last)."""
    folder = out_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _CHECKPOINT_DIR.match(path.name)) and (path / TRAIN_STATE).is_file()
    ]
    return max(found)[1] if found else None


def _step_name(step: int) -> str:
    return f"step-{step:07d}"


def _save_checkpoint(
    out_dir: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    config: FinetuneConfig,
    loss: float,
    data_digest: str | None,
) -> None:
    folder = out_dir / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    staging = folder / f".tmp-{_step_name(step)}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _save_adapter(staging, model)
    tensors, groups = optimizer_to_safe(optimizer)
    save_file(tensors, str(staging / OPTIMIZER_STATE))
    state = {
        "step": step,
        "loss": loss,
        "prompt_version": PROMPT_VERSION,
        "dataset_sha256": data_digest,
        "optimizer_param_groups": groups,
        "config": config.resume_fingerprint(),
    }
    (staging / TRAIN_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    final = folder / _step_name(step)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    done = sorted(
        (int(m.group(1)), path)
        for path in folder.iterdir()
        if (m := _CHECKPOINT_DIR.match(path.name))
    )
    for _, old in done[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _restore(
    checkpoint: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    config: FinetuneConfig,
    data_digest: str | None,
) -> int:
    state = json.loads((checkpoint / TRAIN_STATE).read_text(encoding="utf-8"))
    # A finished run in the same folder would otherwise be "resumed" on other data and
    # published as trained on it (a dataset folded with feedback keeps the world's run
    # folder). Checkpoints saved before the digest was recorded are taken as they are.
    saved_digest = state.get("dataset_sha256")
    if None not in (saved_digest, data_digest) and saved_digest != data_digest:
        raise ValueError(
            f"{checkpoint} was trained on another dataset version; use a new out folder"
        )
    saved, current = state["config"], config.resume_fingerprint()
    if saved != current:
        changed = sorted(key for key in current if saved.get(key) != current[key])
        raise ValueError(
            f"{checkpoint} was trained with different settings ({', '.join(changed)}); "
            "use a new out folder or the same settings"
        )
    if state.get("prompt_version") != PROMPT_VERSION:
        raise ValueError(
            f"{checkpoint} was trained on prompts {state.get('prompt_version')}, "
            f"not {PROMPT_VERSION}; use a new out folder"
        )
    set_peft_model_state_dict(model, load_file(str(checkpoint / ADAPTER_WEIGHTS)))
    tensors = load_file(str(checkpoint / OPTIMIZER_STATE))
    optimizer.load_state_dict(optimizer_from_safe(tensors, state["optimizer_param_groups"]))
    step: int = state["step"]
    return step


def _save_adapter(folder: Path, model: Any) -> None:
    weights = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(str(folder))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the resumed step: those steps run again and log again."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _write_outputs(
    out_dir: Path,
    model: Any,
    tokenizer: Any,
    config: FinetuneConfig,
    *,
    dataset_dir: Path,
    step: int,
    final_loss: float,
    eval_loss: float | None,
    skipped: int,
    profile: ServingProfile,
    probe: ProbeResult,
) -> None:
    _save_adapter(out_dir, model)
    tokenizer.save_pretrained(str(out_dir))
    profile.write(out_dir)
    state = {
        "step": step,
        "final_loss": final_loss,
        "eval_loss": eval_loss,
        "skipped_too_long": skipped,
        "prompt_version": PROMPT_VERSION,
        "base_model": str(config.base_model),
        "dataset": str(resolve_dataset_dir(dataset_dir)),
        "finished_at": datetime.now(UTC).isoformat(),
        "probe": probe.record(),
        "config": config.model_dump(mode="json"),
    }
    # Written last: its presence says the folder holds a finished adapter.
    (out_dir / TRAIN_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
