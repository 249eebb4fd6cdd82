"""Hyper-parameters of BoigLLM LoRA fine-tuning, each documented, with named presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]

RESUME_INDEPENDENT_FIELDS = frozenset(
    {"max_steps", "eval_every", "checkpoint_every", "probe_every"}
)
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
    lora_layers: tuple[int, int] | None = Field(
        default=None,
        description=(
            "First and last (inclusive) decoder layer that get adapters (peft "
            "layers_to_transform); None: every layer. Adapting only the upper layers lets "
            "the backward pass stop there: SmolLM2-135M has 30 layers, and layers 18-29 cost "
            "about half the backward of all 30."
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
            "Share of batches (or of slots, without one_direction_per_batch) drawn from "
            "content simulation (context + level -> verbalization); the rest is behaviour "
            "simulation (context + verbalization -> level). 1.0 or 0.0 trains one direction "
            "only; its examples must exist."
        ),
    )
    one_direction_per_batch: bool = Field(
        default=False,
        description=(
            "Every batch is all content or all behaviour. A 1-token behaviour target next to "
            "~150-token descriptions gets a gradient of its own scale this way, and a batch "
            "of short behaviour prompts pads less."
        ),
    )
    balanced: bool = Field(
        default=False,
        description=(
            "Draw content examples evenly over (account, level) cells and behaviour examples "
            "evenly over levels, instead of in proportion to the data: the model sees each "
            "brand's high-KPI look as often as its most common one."
        ),
    )
    per_example_loss: bool = Field(
        default=False,
        description=(
            "Average the (weighted) token losses within each example, then over the examples. "
            "Off: one mean over every target token of the batch, where a 150-token "
            "description outweighs a 1-token level answer 150 to 1."
        ),
    )
    weight_words: float = Field(
        default=1.0,
        ge=0.0,
        description=(
            "Loss weight of content target tokens that spell a colour name, tone word or "
            "object label: the look itself. Weights change how the loss is shared, never what "
            "minimizes it at each position (the true conditional)."
        ),
    )
    weight_rgb: float = Field(
        default=1.0, ge=0.0, description="Loss weight of a colour's RGB digits."
    )
    weight_coverage: float = Field(
        default=1.0, ge=0.0, description="Loss weight of a colour's coverage percentage."
    )
    weight_decimals: float = Field(
        default=1.0,
        ge=0.0,
        description=(
            "Loss weight of object confidences and box corners: detector noise that the "
            "context cannot predict (~28% of content target tokens)."
        ),
    )
    retrieval: bool = Field(
        default=False,
        description=(
            "Retrieval-augmented prompts: the content prompt carries the account's own past "
            "look at the target level (services.common.history: ~40 tokens, from the "
            "training split, each training row left out of its own history), the behaviour "
            "prompt its past look at each level. The describer then serves with the same "
            "lines from the account's ingested history."
        ),
    )
    behaviour_scoring: Literal["auto", "discriminative", "generative"] = Field(
        default="discriminative",
        description=(
            "How the published checkpoint answers behaviour questions: discriminative (the "
            "level word after the behaviour prompt), generative (the description's likelihood "
            "under the content prompt of each level, calibrated; needs retrieval), or auto: "
            "whichever has the higher level accuracy on validation rows of the training split "
            "at the end of the run."
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
        description=(
            "Validation examples per evaluation, split between directions like a batch. They "
            "are a seeded slice of the training split, held out of training; the test split "
            "is left for `make eval-llm`."
        ),
    )
    probe_every: int = Field(
        default=0,
        ge=0,
        description=(
            "Every this many steps (and at step 0 and the end) the conditioning probe runs on "
            "validation rows and its figures go to metrics.jsonl (~20-60 s on 2 cores for "
            "SmolLM2); 0: only at the end."
        ),
    )
    probe_rows: int = Field(
        default=48,
        ge=3,
        description=(
            "Validation rows of each direction the probe reads (stratified); twice as many "
            "posts are held out of training for validation, so a resumed run must keep it."
        ),
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


_CONVERGING = {
    "per_example_loss": True,
    "balanced": True,
    "one_direction_per_batch": True,
    "weight_words": 3.0,
    "weight_rgb": 1.0,
    "weight_coverage": 0.3,
    "weight_decimals": 0.1,
    "min_lr_ratio": 0.5,
}
"""The recipe that converges, shared by the cpu and gpu presets: per-example loss, weights on
the look (names, tones, labels) over detector noise (decimals), balanced (brand, level) cells,
one direction per batch, and a schedule that ends at half the peak rather than near zero."""

_RETRIEVAL = {"retrieval": True, "weight_coverage": 1.0, "max_seq_length": 704}
"""The history line in the prompt, and coverages weighted like RGB digits: the line spells
each colour's mean share, so a coverage is copied and adjusted like an RGB, not guessed (at
×0.3 without shares in the line, 100 steps wrote 90% and 9% on almost every row). A
behaviour prompt carries three history lines: 480 tokens at the median, 656 at most on
world v3, so 512 skipped a quarter of them."""


def cpu_preset(base_model: Path) -> FinetuneConfig:
    """SmolLM2-135M on 2 CPU cores in ~15 minutes, retrieval-augmented (the served default):
    100 steps of 8 compact examples, LoRA r8 on the upper 12 of its 30 layers (the backward
    stops there), three quarters of the batches content. The history line in the prompt
    carries the brand's look at the level from the first step (the base model already copies
    it); fine-tuning teaches the model the format, the RGB spelling of the colours, and to
    use the line rather than the global mode. Behaviour: whichever reading (the level word
    or Bayes through the content direction) wins on validation rows."""
    return FinetuneConfig(
        base_model=base_model,
        lora_r=8,
        lora_alpha=16,
        lora_layers=(18, 29),
        learning_rate=1e-3,
        warmup_steps=5,
        max_steps=100,
        content_fraction=0.75,
        behaviour_scoring="auto",
        eval_every=50,
        probe_every=25,
        **{**_CONVERGING, **_RETRIEVAL},  # type: ignore[arg-type]
    )


def cpu_weights_preset(base_model: Path) -> FinetuneConfig:
    """The weight-only recipe on CPU (no history in the prompt): what the gpu preset runs,
    sized for 2 cores so that the probe can show it learning (JS rising run over run). On
    2 cores it learns the marginal and the beginnings of brand conditioning, not the level."""
    return cpu_preset(base_model).model_copy(
        update={
            "retrieval": False,
            "behaviour_scoring": "discriminative",
            "weight_coverage": _CONVERGING["weight_coverage"],
        }
    )


def gpu_preset(base_model: Path) -> FinetuneConfig:
    """An 8B-class instruct base (e.g. Llama-3.1-8B-Instruct, a local folder) on one GPU in
    bfloat16: LoRA r16 on every layer, 1,500 steps of 32 examples (~3 epochs of the world's
    training split per direction mix), weight-only conditioning with retrieval on top.
    Expected cost, not yet measured here: ~1.5 s per step on an H100-class GPU, ~40 min."""
    return FinetuneConfig(
        base_model=base_model,
        lora_r=16,
        lora_alpha=32,
        learning_rate=2e-4,
        warmup_steps=50,
        batch_size=32,
        max_steps=1500,
        content_fraction=0.75,
        behaviour_scoring="auto",
        dtype="bfloat16",
        device="cuda",
        gradient_checkpointing=True,
        eval_every=250,
        probe_every=250,
        checkpoint_every=250,
        **{**_CONVERGING, **_RETRIEVAL},  # type: ignore[arg-type]
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


PRESETS = {
    "cpu": cpu_preset,
    "cpu-weights": cpu_weights_preset,
    "gpu": gpu_preset,
    "tiny": tiny_preset,
}
