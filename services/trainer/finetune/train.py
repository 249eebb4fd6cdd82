"""LoRA fine-tuning of BoigLLM on both directions, with step logs and resumable checkpoints.

Everything written is safetensors (tensors) or JSON (scalars): a checkpoint can be loaded
without running pickled code, and its files diff and inspect with ordinary tools.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.prompts import PROMPT_VERSION
from services.common.torch_device import resolve_device, resolve_dtype
from services.trainer.finetune.config import FinetuneConfig
from services.trainer.finetune.data import (
    IGNORE_INDEX,
    TokenizedExample,
    batch_schedule,
    collate,
    load_examples,
    prepare,
    resolve_dataset_dir,
)
from services.trainer.ingest.dataset import Direction
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

    train = prepare(
        load_examples(dataset_dir, "train"),
        tokenizer,
        max_seq_length=config.max_seq_length,
        few_shot=config.few_shot_prompt,
    )
    test = _eval_examples(dataset_dir, tokenizer, config)
    sizes = {direction: len(items) for direction, items in train.examples.items()}
    schedule = batch_schedule(
        sizes,
        content_fraction=config.content_fraction,
        batch_size=config.batch_size,
        steps=config.max_steps,
        seed=config.seed,
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
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        start_step = _restore(checkpoint, model, optimizer, config)
        logger.info("resuming from %s (step %d)", checkpoint, start_step)
    _truncate_metrics(out_dir / METRICS, start_step)

    pad_id = int(tokenizer.pad_token_id)
    losses: list[float] = []
    loss_value = math.nan
    eval_loss: float | None = None
    model.train()
    with (out_dir / METRICS).open("a", encoding="utf-8") as metrics:
        for step in range(start_step + 1, config.max_steps + 1):
            step_started = time.perf_counter()
            lr = learning_rate_at(step - 1, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Dropout masks depend on (seed, step) only, so a resumed run draws the same ones.
            torch.manual_seed(config.seed * 1_000_003 + step)
            rows = [train.examples[direction][index] for direction, index in schedule[step - 1]]
            loss = _loss(model, rows, pad_id, device)
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
                eval_loss = evaluate(model, test, pad_id, device, config.batch_size)
                record["eval_loss"] = eval_loss
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            logger.debug("step %d loss %.4f lr %.2e", step, loss_value, lr)
            if step % config.checkpoint_every == 0 or last:
                _save_checkpoint(out_dir, step, model, optimizer, config, loss_value)
            if progress is not None:
                progress(StepReport(step, config.max_steps, loss_value, lr))

    if start_step >= config.max_steps:  # nothing left to run: report the saved state
        state = json.loads(
            (out_dir / CHECKPOINTS / _step_name(start_step) / TRAIN_STATE).read_text()
        )
        loss_value = float(state["loss"])
        eval_loss = state.get("eval_loss")
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
    model: Any, rows: list[TokenizedExample], pad_id: int, device: torch.device
) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of the batch (labels -100 skipped)."""
    batch = {
        key: torch.tensor(value, dtype=torch.long, device=device)
        for key, value in collate(rows, pad_id).items()
    }
    parts = _decoder_and_head(model)
    if parts is None:
        output = model(**batch, use_cache=False)
        loss: torch.Tensor = output.loss
        return loss
    # Only target positions need logits: projecting every prompt position onto the 49k-word
    # vocabulary was ~40% of a CPU step for SmolLM2, and a behaviour example's target is
    # 2 tokens of ~230. Same loss as the model's own (shifted, mean over targets).
    decoder, head = parts
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    labels = batch["labels"][:, 1:]
    targets = labels != IGNORE_INDEX
    logits = head(hidden[:, :-1][targets])
    return torch.nn.functional.cross_entropy(logits.float(), labels[targets])


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
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
) -> float:
    """Mean loss per target token over ``examples``, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            rows = examples[start : start + batch_size]
            count = sum(sum(1 for label in row.labels if label != -100) for row in rows)
            total += float(_loss(model, rows, pad_id, device)) * count
            tokens += count
    if was_training:
        model.train()
    return total / max(1, tokens)


def _eval_examples(
    dataset_dir: Path, tokenizer: Any, config: FinetuneConfig
) -> list[TokenizedExample]:
    if not config.eval_every:
        return []
    try:
        raw = load_examples(dataset_dir, "test")
    except FileNotFoundError:
        logger.warning("no test split: evaluation is off")
        return []
    prepared = prepare(
        raw, tokenizer, max_seq_length=config.max_seq_length, few_shot=config.few_shot_prompt
    ).examples
    content = round(config.eval_examples * config.content_fraction)
    return (
        prepared[Direction.CONTENT][:content]
        + prepared[Direction.BEHAVIOUR][: config.eval_examples - content]
    )


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
    checkpoint: Path, model: Any, optimizer: torch.optim.Optimizer, config: FinetuneConfig
) -> int:
    state = json.loads((checkpoint / TRAIN_STATE).read_text(encoding="utf-8"))
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
) -> None:
    _save_adapter(out_dir, model)
    tokenizer.save_pretrained(str(out_dir))
    state = {
        "step": step,
        "final_loss": final_loss,
        "eval_loss": eval_loss,
        "skipped_too_long": skipped,
        "prompt_version": PROMPT_VERSION,
        "base_model": str(config.base_model),
        "dataset": str(resolve_dataset_dir(dataset_dir)),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": config.model_dump(mode="json"),
    }
    # Written last: its presence says the folder holds a finished adapter.
    (out_dir / TRAIN_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
