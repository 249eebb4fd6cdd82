"""Hyper-parameters of BoigLLM LoRA fine-tuning, each documented, with named presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]

RESUME_INDEPENDENT_FIELDS = frozenset({"max_steps", "eval_every", "checkpoint_every"})
"""Fields that may change between an interrupted run and its resumption: they decide when the
run stops and what it writes, not the path the weights take (the learning-rate schedule is a
function of ``max_steps`` too, so changing it on resume bends the remaining schedule)."""


class FinetuneConfig(BaseModel):
    """One fine-tuning run. Defaults suit any base model; the presets below size a run to a
    hardware budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: Path = Field(
        description=(
            "Local folder of a Hugging Face causal LM (config.json, weights, tokenizer), loaded "
            "with local_files_only: never the hub. Its chat template renders the prompts, as "
            "the describer's transformers backend does."
        ),
    )
    lora_r: int = Field(
        default=16,
        ge=1,
        le=512,
        description=(
            "LoRA rank: width of the low-rank update per adapted matrix. Trainable parameters "
            "grow linearly with it; 8-16 suits a 135M model."
        ),
    )
    lora_alpha: int = Field(
        default=32,
        gt=0,
        description=(
            "LoRA scaling numerator: the update is multiplied by lora_alpha / lora_r, so "
            "doubling lora_r at a fixed alpha halves the effective step of each direction. "
            "Interacts with learning_rate."
        ),
    )
    lora_dropout: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description=(
            "Dropout probability on the LoRA input during training (none at inference). "
            "Reseeded every step from seed and step, so resumed runs draw the same masks."
        ),
    )
    lora_target_modules: tuple[str, ...] = Field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1,
        description=(
            "Names (suffixes) of the linear layers that get adapters; the defaults are every "
            "attention and MLP projection of Llama-family models such as SmolLM2."
        ),
    )
    learning_rate: float = Field(
        default=2e-4,
        gt=0,
        description=(
            "Peak AdamW learning rate (per optimizer step). Reached after warmup_steps, then "
            "decays on a cosine to min_lr_ratio x peak at max_steps."
        ),
    )
    warmup_steps: int = Field(
        default=10,
        ge=0,
        description="Steps of linear warm-up from 0 to learning_rate; must be below max_steps.",
    )
    min_lr_ratio: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Learning rate at max_steps as a fraction of the peak (cosine floor).",
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0.0,
        description="AdamW decoupled weight decay on the LoRA weights (per step, x lr).",
    )
    max_grad_norm: float = Field(
        default=1.0,
        gt=0,
        description="Global L2 norm the gradients are clipped to before each optimizer step.",
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        description=(
            "Examples per optimizer step (no accumulation). CPU time per step grows about "
            "linearly with batch_size x sequence length."
        ),
    )
    max_steps: int = Field(
        default=160,
        ge=1,
        description=(
            "Optimizer steps of the whole run; also the end of the learning-rate schedule. "
            "Examples are drawn with reshuffled passes, so it need not divide the data size."
        ),
    )
    max_seq_length: int = Field(
        default=512,
        ge=8,
        description=(
            "Most tokens of prompt + target. Examples longer than this are skipped (counted "
            "in the result), never truncated: a cut prompt is not the describer's prompt. "
            "Compact SmolLM2 examples are ~100-250 tokens; few-shot content ones ~700."
        ),
    )
    few_shot_prompt: bool = Field(
        default=False,
        description=(
            "Train content simulation on the base model's few-shot prompt (format spec and two "
            "worked examples) instead of the compact one (one system line and the request). "
            "The manifest records it and the describer serves the checkpoint with the same "
            "prompt. Compact examples are about a quarter as long, so train ~4x faster."
        ),
    )
    content_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Share of each batch drawn from content simulation (context + level -> "
            "verbalization); the rest is behaviour simulation (context + verbalization -> "
            "level). 1.0 or 0.0 trains one direction only; its examples must exist."
        ),
    )
    seed: int = Field(
        default=0,
        description=(
            "Seeds the LoRA initialization, the example order and the dropout masks: equal "
            "seeds and data give equal runs, also across an interruption."
        ),
    )
    dtype: Dtype = Field(
        default="auto",
        description=(
            "Weight dtype of the frozen base model. auto: bfloat16 on CUDA and on CPUs with "
            "native bfloat16 (AVX512-BF16, AMX), float32 on other CPUs. The LoRA weights and "
            "their optimizer state stay float32 either way (peft upcasts adapters), so "
            "bfloat16 costs only forward precision; on a 2-core CPU with AVX512-BF16 it made a "
            "SmolLM2 step ~25% faster, on one without it ~2.5x slower (torch emulates it)."
        ),
    )
    device: Device = Field(default="auto", description="auto: cuda when available, else cpu.")
    gradient_checkpointing: bool = Field(
        default=False,
        description=(
            "Recompute activations in the backward pass instead of keeping them: about a third "
            "more compute per step, far less memory. Compact SmolLM2 batches (8 x ~300 tokens) "
            "fit easily without it; turn it on for long prompts (8 x ~700-token few-shot "
            "examples were killed for memory on a 24 GiB machine) or large bases."
        ),
    )
    eval_every: int = Field(
        default=40,
        ge=0,
        description=(
            "Every this many steps (and at the end), the mean target loss on up to "
            "eval_examples test examples is logged; 0 turns evaluation off."
        ),
    )
    eval_examples: int = Field(
        default=32,
        ge=1,
        description="Test examples per evaluation, split between directions like a batch.",
    )
    checkpoint_every: int = Field(
        default=25,
        ge=1,
        description=(
            "Every this many steps (and at the last step) adapter + optimizer state are saved "
            "under out/checkpoints; a re-run with the same out folder resumes from the newest. "
            "Each SmolLM2 r=16 checkpoint is ~30 MB (adapter + two Adam moments)."
        ),
    )
    keep_checkpoints: int = Field(
        default=2, ge=1, description="Newest checkpoints kept; older ones are deleted."
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> FinetuneConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})"
            )
        return self

    def resume_fingerprint(self) -> dict[str, Any]:
        """The fields a checkpoint must agree with to be resumed by this config."""
        return self.model_dump(mode="json", exclude=set(RESUME_INDEPENDENT_FIELDS))


def cpu_preset(base_model: Path) -> FinetuneConfig:
    """SmolLM2-135M on 2 CPU cores in 20-30 minutes: 120 steps of 8 compact examples (~250
    tokens each), three quarters content simulation (the descriptions are what the generator
    uses; a level is 2 target tokens, a description ~150). Measured over whole runs: ~9.4 s
    per step in bfloat16 on an earlier 2-core machine where bfloat16 was the faster (19 min),
    ~13.4 s in float32 on one without native bfloat16 (27 min); dtype auto picks. The loss
    flattens after ~50 steps; a learning rate above the usual 2e-4 because the run is short.
    What it does not buy: a 135M model this briefly tuned learns the format and the overall
    look of the data, not yet how the look depends on the brand and the level (see the
    README's evaluation)."""
    return FinetuneConfig(
        base_model=base_model,
        learning_rate=5e-4,
        max_steps=120,
        content_fraction=0.75,
        eval_every=40,
    )


def tiny_preset(base_model: Path) -> FinetuneConfig:
    """A tiny random model in seconds, for tests: a high learning rate, small batches."""
    return FinetuneConfig(
        base_model=base_model,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        learning_rate=3e-2,
        warmup_steps=2,
        batch_size=4,
        max_steps=30,
        max_seq_length=2048,
        eval_every=10,
        eval_examples=8,
        checkpoint_every=10,
    )


PRESETS = {"cpu": cpu_preset, "tiny": tiny_preset}
