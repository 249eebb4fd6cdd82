"""Wire models shared by every service: the contract between them (design §3–§5).

The Python client ships this module as ``boig_client.contracts`` (clients/python), so it
imports the standard library and pydantic only.

Numbers that the text form of a verbalization carries with two decimals (coverage,
confidence, box corners) are rounded on the way in, so that the structured form and
the text form hold exactly the same information and ``parse(render(x)) == x``.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_BATCH_IMAGES = 64
"""Hard ceiling for any batch of images in one internal request; services configure lower."""


class Contract(BaseModel):
    # A field with a wire name (an alias) is read and written under it, and Python code may
    # construct it under either name.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
    )


class KpiLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


KPI_LEVELS: tuple[KpiLevel, ...] = (KpiLevel.LOW, KpiLevel.MEDIUM, KpiLevel.HIGH)


class Tone(StrEnum):
    """Tone words; each belongs to one axis and an image has at most one word per axis."""

    WARM = "warm"
    COOL = "cool"
    NEUTRAL = "neutral"
    DARK = "dark"
    BRIGHT = "bright"
    HIGH_CONTRAST = "high-contrast"
    LOW_CONTRAST = "low-contrast"
    SATURATED = "saturated"
    MUTED = "muted"


TONE_AXES: dict[str, tuple[Tone, ...]] = {
    "warmth": (Tone.WARM, Tone.COOL, Tone.NEUTRAL),
    "lightness": (Tone.DARK, Tone.BRIGHT),
    "contrast": (Tone.HIGH_CONTRAST, Tone.LOW_CONTRAST),
    "saturation": (Tone.SATURATED, Tone.MUTED),
}
TONE_AXIS: dict[Tone, str] = {tone: axis for axis, tones in TONE_AXES.items() for tone in tones}
_TONE_ORDER: dict[Tone, int] = {tone: index for index, tone in enumerate(Tone)}


def _two_decimals(value: float) -> float:
    return round(float(value), 2)


Fraction = Annotated[float, Field(ge=0.0, le=1.0), AfterValidator(_two_decimals)]
Channel = Annotated[int, Field(ge=0, le=255)]
Name = Annotated[
    str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_-]*( [a-z0-9_-]+)*$")
]


def _collapse_whitespace(value: object) -> object:
    # One canonical spelling: no line breaks, control characters or runs of spaces, so a
    # caption stays on its line of the text form and repair() has nothing left to change.
    return " ".join(value.split()) if isinstance(value, str) else value


OneLine = Annotated[str, BeforeValidator(_collapse_whitespace), Field(min_length=1, max_length=300)]


class ColorSwatch(Contract):
    name: Name = Field(description="Nearest basic colour name, lower case.")
    rgb: tuple[Channel, Channel, Channel] = Field(description="sRGB, 0–255 per channel.")
    coverage: Fraction = Field(description="Fraction of the image this colour covers (2 decimals).")


class DetectedObject(Contract):
    label: Name = Field(description="Detector class name, lower case.")
    confidence: Fraction = Field(description="Detector confidence in [0,1] (2 decimals).")
    box: tuple[Fraction, Fraction, Fraction, Fraction] = Field(
        description="Normalized [x0, y0, x1, y1], origin top-left, 2 decimals."
    )

    @field_validator("box")
    @classmethod
    def _ordered(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        if x0 > x1 or y0 > y1:
            raise ValueError("box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
        return box


class Verbalization(Contract):
    """How an image looks, in the shared description language (design §4)."""

    caption: OneLine | None = None
    colors: list[ColorSwatch] = Field(default_factory=list, max_length=12)
    tones: list[Tone] = Field(default_factory=list, max_length=len(TONE_AXES))
    objects: list[DetectedObject] = Field(default_factory=list, max_length=50)
    text: Annotated[str, Field(min_length=1, max_length=300)] | None = Field(
        default=None, description="Text written on the image."
    )

    @field_validator("tones")
    @classmethod
    def _one_tone_per_axis(cls, tones: list[Tone]) -> list[Tone]:
        axes = [TONE_AXIS[tone] for tone in tones]
        if len(set(axes)) != len(axes):
            raise ValueError(
                "at most one tone word per axis (warmth, lightness, contrast, saturation)"
            )
        return sorted(tones, key=_TONE_ORDER.__getitem__)

    @model_validator(mode="after")
    def _coverage_fits(self) -> Verbalization:
        # Two-decimal rounding of each swatch can push an exact 100% a little over.
        total = sum(color.coverage for color in self.colors)
        if total > 1.0 + 0.005 * max(1, len(self.colors)):
            raise ValueError(f"colour coverages sum to {total:.2f}, more than the whole image")
        return self


AccountName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
KpiName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
"""A KPI's name (likes, clicks, downloads): lower case, at most 32 characters."""


class Context(Contract):
    """Where and for whom a creative is posted."""

    account: AccountName = Field(description="Brand account.")
    text: str = Field(default="", max_length=1000, description="Post text or title.")
    keywords: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        default_factory=list, max_length=20
    )
    posted_at: datetime | None = Field(default=None, description="Post time; naive means UTC.")

    @field_validator("posted_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class KpiTarget(Contract):
    name: KpiName = Field(default="likes", description="KPI name.")
    level: KpiLevel = Field(default=KpiLevel.HIGH, description="Target bucket of the KPI.")


class ModelInfo(Contract):
    name: str = Field(description="Model name or path it was loaded from.")
    version: str = Field(description="Checkpoint version or content hash.")


class ErrorDetail(Contract):
    type: str = Field(
        description=(
            "Machine-readable error type (invalid_input, unauthorized, rate_limited, overloaded, "
            "upstream_error, ...): a client maps it back to a typed exception."
        )
    )
    message: str = Field(description="What went wrong, for people.")
    request_id: str | None = Field(
        description="The request's X-Request-ID, to find its lines in the services' logs."
    )


class Error(Contract):
    """The body of every error answer of every BOIG service (``BoigError.to_payload``)."""

    error: ErrorDetail


# --- featurizer -------------------------------------------------------------------------

ImageId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _from_base64(value: object) -> object:
    """A str is the JSON form, base64 (optionally as a data URL); bytes pass as they are
    (MessagePack bodies and Python callers carry the file itself)."""
    if not isinstance(value, str):
        return value
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        decoded = base64.b64decode(value)
    except (binascii.Error, ValueError):
        decoded = None
    # Without validate=True, b64decode skips characters outside the alphabet; then fewer
    # bytes come out than the length promises, and only such input takes the strict path
    # (validate=True's regex costs ten times the decoding of a ~40 KB creative).
    if decoded is None or len(value) % 4 or len(decoded) != _decoded_length(value):
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
    return decoded


def _decoded_length(text: str) -> int:
    return len(text) // 4 * 3 - text[-2:].count("=")


def _not_empty(value: bytes) -> bytes:
    if not value:
        raise ValueError("the image is empty")
    return value


def _to_base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


EncodedImage = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    AfterValidator(_not_empty),
    PlainSerializer(_to_base64, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "contentEncoding": "base64",
            "description": "The image file (PNG, JPEG, WebP, GIF), base64 in JSON; raw bytes "
            "in a MessagePack body.",
        }
    ),
]
"""An image file: bytes in Python, base64 in JSON, raw in MessagePack (services.common.wire)."""


class ImageInput(Contract):
    """An image file to analyse or score, with the id its result is reported under."""

    id: ImageId | None = None
    data: EncodedImage = Field(alias="image_base64")


class FeaturizeRequest(Contract):
    images: list[ImageInput] = Field(min_length=1, max_length=MAX_BATCH_IMAGES)
    detect_objects: bool = True


class FeaturizeResult(Contract):
    id: str | None
    width: int
    height: int
    animated: bool = Field(
        default=False, description="The file has several frames; the first was analysed."
    )
    verbalization: Verbalization


class FeaturizeResponse(Contract):
    results: list[FeaturizeResult]
    featurizer_version: str
    detector: ModelInfo | None


# --- describer --------------------------------------------------------------------------


class DescribeRequest(Contract):
    context: Context
    target: KpiTarget = Field(default_factory=KpiTarget)


class DescribeResponse(Contract):
    verbalization: Verbalization
    text: str = Field(description="The verbalization in its text form: a creative brief.")
    repairs: list[str] = Field(description="What the parser had to fix in the model's output.")
    model: ModelInfo
    prompt_version: str
    cached: bool


class LikelihoodRequest(Contract):
    context: Context
    kpi_name: KpiName = "likes"
    verbalizations: list[Verbalization] = Field(min_length=1, max_length=MAX_BATCH_IMAGES)


class LevelDistribution(Contract):
    probabilities: dict[KpiLevel, float] = Field(description="P(level), summing to 1.")
    expected_percentile: float = Field(
        ge=0.0, le=1.0, description="Expected normalized KPI: sum of P(level) x bucket midpoint."
    )


class LikelihoodResponse(Contract):
    results: list[LevelDistribution]
    model: ModelInfo
    prompt_version: str


# --- scorer -----------------------------------------------------------------------------

RewardName = Literal["match", "likelihood", "contrastive"]


class Creative(ImageInput):
    """A candidate creative: an image whose score is reported under its (required) id."""

    id: ImageId


def compared_levels(reward: RewardName, level: KpiLevel) -> tuple[KpiLevel, ...]:
    """The levels whose descriptions ``reward`` compares creatives with, for a target at
    ``level``: match its own; contrastive always high against low; likelihood none."""
    if reward == "match":
        return (level,)
    if reward == "contrastive":
        return (KpiLevel.HIGH, KpiLevel.LOW)
    return ()


class TargetDescription(Contract):
    """How an image for one KPI level should look: what a reward compares creatives with."""

    level: KpiLevel
    verbalization: Verbalization
    text: str = Field(
        max_length=4000, description="The verbalization in its text form: a creative brief."
    )
    model: ModelInfo | None = Field(
        default=None, description="The describer model that wrote it; none if a caller did."
    )

    @classmethod
    def described(cls, level: KpiLevel, answer: DescribeResponse) -> TargetDescription:
        """The describer's answer for ``level``, as a target."""
        return cls(
            level=level, verbalization=answer.verbalization, text=answer.text, model=answer.model
        )


MAX_EDITS = 10
"""Most edits one creative's score may carry (``ScoreRequest.max_edits``)."""

EditKind = Literal[
    "recolor",
    "add_object",
    "remove_object",
    "move_object",
    "replace_object",
    "set_tone",
    "change_caption",
]


class EditPart(Contract):
    """One part of a description that an edit takes away or puts in: exactly one field set."""

    color: ColorSwatch | None = Field(default=None, description="A palette colour.")
    object: DetectedObject | None = Field(default=None, description="An object and its box.")
    tone: Tone | None = Field(default=None, description="A tone word.")
    caption: OneLine | None = Field(default=None, description="The caption.")

    @model_validator(mode="after")
    def _one_part(self) -> EditPart:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"an edit part holds exactly one of color, object, tone, caption; got {given}"
            )
        return self

    @property
    def field(self) -> Literal["colors", "objects", "tones", "caption"]:
        """The Verbalization field this part belongs to."""
        if self.color is not None:
            return "colors"
        if self.object is not None:
            return "objects"
        return "tones" if self.tone is not None else "caption"


class Edit(Contract):
    """One concrete change to a creative that moves its description toward the target's."""

    kind: EditKind = Field(
        description="recolor: repaint a colour region (same coverage); add_object, "
        "remove_object, move_object (same object, the target's box), replace_object (another "
        "class in the target's box); set_tone: another word on one tone axis; change_caption."
    )
    summary: str = Field(
        description="The edit for people, e.g. 'background grey → teal (covers 60%)'."
    )
    before: EditPart | None = Field(
        description="The part of the creative's description it changes; none when it adds."
    )
    after: EditPart | None = Field(description="What that part becomes; none when it removes.")
    reward: float = Field(
        description="The reward the creative's description would get with this edit alone."
    )
    gain: float = Field(gt=0, description="reward minus the creative's total.")

    @model_validator(mode="after")
    def _changes_something(self) -> Edit:
        if self.before is None and self.after is None:
            raise ValueError("an edit needs a part before or after it")
        if self.before is not None and self.before == self.after:
            raise ValueError("an edit must change its part")
        if (
            self.before is not None
            and self.after is not None
            and self.before.field != self.after.field
        ):
            raise ValueError("an edit changes a part into a part of the same field")
        return self

    @property
    def field(self) -> Literal["colors", "objects", "tones", "caption"]:
        """The Verbalization field the edit changes."""
        part = self.before or self.after
        assert part is not None  # the validator refuses an edit without parts
        return part.field


class ScoreRequest(Contract):
    context: Context
    target: KpiTarget = Field(default_factory=KpiTarget)
    reward: RewardName = "match"
    creatives: list[Creative] = Field(min_length=1, max_length=MAX_BATCH_IMAGES)
    targets: list[TargetDescription] = Field(
        default_factory=list,
        max_length=len(KPI_LEVELS),
        description="Descriptions to compare with, one per level at most, instead of asking "
        "BoigLLM: the generator sends those it prompted with, so its images are scored "
        "against the description they were made for. A level the reward needs that is not "
        "here is described by BoigLLM. Only the match and contrastive rewards use them.",
    )
    max_edits: int = Field(
        default=0,
        ge=0,
        le=MAX_EDITS,
        description="Suggest up to this many edits per creative (0: none): the differences "
        "between its description and the target's that raise its reward most, best first. "
        "Match and contrastive rewards only: the likelihood reward compares with no "
        "description, and would need a BoigLLM call per candidate edit.",
    )

    @model_validator(mode="after")
    def _edits_fit(self) -> ScoreRequest:
        if self.max_edits and self.reward == "likelihood":
            raise ValueError(
                "max_edits: edits are suggested for the match and contrastive rewards; the "
                "likelihood reward compares with no target description to edit toward"
            )
        return self

    @model_validator(mode="after")
    def _targets_fit(self) -> ScoreRequest:
        levels = [target.level for target in self.targets]
        if len(set(levels)) != len(levels):
            raise ValueError("targets: at most one description per level")
        used = compared_levels(self.reward, self.target.level)
        unused = sorted(level.value for level in set(levels) - set(used))
        if unused:
            raise ValueError(
                f"targets: the {self.reward} reward at this level compares with no "
                f"description for {', '.join(unused)}"
            )
        return self

    @field_validator("creatives")
    @classmethod
    def _unique_ids(cls, creatives: list[Creative]) -> list[Creative]:
        ids = [creative.id for creative in creatives]
        if len(set(ids)) != len(ids):
            raise ValueError("creative ids must be unique within a request")
        return creatives


class CreativeScore(Contract):
    id: str
    rank: int = Field(ge=1)
    total: float
    breakdown: dict[str, float] = Field(description="Each reward component, before weighting.")
    verbalization: Verbalization
    notes: list[str] = Field(
        default_factory=list,
        description="What the score rests on beyond the image as sent, e.g. that only the "
        "first frame of an animated image was scored.",
    )
    edits: list[Edit] = Field(
        default_factory=list,
        max_length=MAX_EDITS,
        description="When the request asked (max_edits): what to change to raise the reward, "
        "largest gain first, each touching a different part of the creative; only edits "
        "that raise the reward.",
    )
    total_with_edits: float | None = Field(
        default=None,
        description="The reward with every listed edit applied together; none without edits.",
    )


class ScoreResponse(Contract):
    reward: RewardName
    weights: dict[str, float] = Field(description="Weight of each component in the total.")
    targets: list[TargetDescription] = Field(
        description="The descriptions the reward compared with."
    )
    results: list[CreativeScore] = Field(description="Best first.")
    models: dict[str, ModelInfo]


# --- generation -------------------------------------------------------------------------
# The public job messages of POST /v1/generate and GET /v1/jobs/{id}; the gateway and the
# generator worker share them through the job tables (services.common.jobs). What one job may
# cost in a deployment is GenerationLimits (services.common.generation), a settings class.

MAX_IMAGES_PER_JOB = 16
MAX_CANDIDATES_PER_JOB = 64
MAX_SIDE = 2048
MAX_SEED = 2**32 - 1

Strategy = Literal["prompt", "best_of_n", "boigsd"]
STRATEGIES: tuple[Strategy, ...] = ("prompt", "best_of_n", "boigsd")


class GenerateRequest(Contract):
    """What a marketing app asks for; fields left out take the generator's settings."""

    context: Context
    target: KpiTarget = Field(default_factory=KpiTarget)
    count: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_JOB, description="Images returned.")
    width: int | None = Field(default=None, ge=64, le=MAX_SIDE, multiple_of=8)
    height: int | None = Field(default=None, ge=64, le=MAX_SIDE, multiple_of=8)
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Image i uses seed + i. Left out, the gateway draws one and records it.",
    )
    strategy: Strategy | None = Field(
        default=None,
        description=(
            "prompt: BoigLLM's target description as the prompt; best_of_n: generate "
            "`candidates`, return the best `count` by reward; boigsd: the published BoigSD "
            "LoRA (the base pipeline, said so, while none is published)."
        ),
    )
    candidates: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CANDIDATES_PER_JOB,
        description="best_of_n only: how many images to generate and score.",
    )
    steps: int | None = Field(default=None, ge=1, le=150, description="Denoising steps.")

    @model_validator(mode="after")
    def _candidates_fit(self) -> GenerateRequest:
        if self.candidates is not None:
            if self.strategy not in (None, "best_of_n"):
                raise ValueError("candidates applies to the best_of_n strategy only")
            if self.candidates < self.count:
                raise ValueError(f"candidates ({self.candidates}) must be at least count")
        return self


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})


class JobAccepted(Contract):
    job_id: str
    status_url: str
    state: JobState


class JobProgress(Contract):
    stage: Literal["starting", "describing", "denoising", "scoring", "saving"]
    step: int = Field(ge=0, description="Denoising steps done.")
    total: int = Field(ge=0, description="Denoising steps in all.")
    eta_seconds: float | None = Field(default=None, ge=0)


class JobError(Contract):
    type: str = Field(description="The error type, as in every BOIG error body.")
    message: str


class JobImage(Contract):
    id: str
    url: str
    rank: int = Field(ge=1)
    seed: int
    width: int
    height: int
    reward: float | None = Field(description="Total reward; null when the job has no scorer.")
    breakdown: dict[str, float]


class JobOutcome(Contract):
    """What the worker records about how it made the images."""

    strategy: Strategy
    width: int
    height: int
    steps: int
    seed: int
    candidates: int
    target_description: str | None = Field(description="BoigLLM's description, text form.")
    prompt: str
    negative_prompt: str | None
    reward: str | None = Field(description="The reward the images were ranked by.")
    models: dict[str, ModelInfo] = Field(description="Every model and checkpoint version used.")
    notes: list[str] = Field(default_factory=list, description="Fallbacks and caveats.")


class JobStatus(Contract):
    job_id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int = Field(description="Times a worker started this job (redeliveries included).")
    cancel_requested: bool = Field(description="A cancel was asked; a running job stops soon.")
    queue_position: int | None = Field(description="1 = next to start; only while queued.")
    progress: JobProgress | None
    request: GenerateRequest
    outcome: JobOutcome | None
    images: list[JobImage]
    error: JobError | None


# --- feedback ---------------------------------------------------------------------------
# The observed KPI of a creative after it was posted (POST /v1/feedback): what the next
# training round learns from. The trainer reads the stored records as ingest rows.

MAX_KPI_VALUE = 1e15
"""Larger observed KPI values are refused as input errors: no post has a quadrillion likes."""
MAX_FEEDBACK_PAGE = 200


class FeedbackRequest(Contract):
    """One observed KPI of one creative: an image generated with this key (``image_id``),
    or any other image (a creative scored with /v1/score, or one made elsewhere) sent
    again with its context. A creative is its image's bytes (their SHA-256) posted on one
    account, whichever way it was named."""

    image_id: ImageId | None = Field(
        default=None,
        description="An image a generation job of this API key produced (GET /v1/images/{id}).",
    )
    image: EncodedImage | None = Field(
        default=None,
        alias="image_base64",
        description="The creative's image file, base64 in JSON (raw bytes in MessagePack); "
        "instead of image_id.",
    )
    context: Context | None = Field(
        default=None,
        description="Where and when the creative was posted; posted_at is required. With "
        "image_id it may be left out when the job's context has a posted_at; given, it "
        "replaces the job's context.",
    )
    kpi_name: KpiName
    kpi_value: float = Field(
        ge=0.0,
        le=MAX_KPI_VALUE,
        allow_inf_nan=False,
        description="The observed KPI, a non-negative finite number (a count or a rate).",
    )
    correction: bool = Field(
        default=False,
        description="Replace this key's recorded value (and context) for this creative and "
        "KPI; with none recorded yet, record it. Without it, a different value or context "
        "for a recorded creative and KPI is a 409.",
    )

    @model_validator(mode="after")
    def _one_creative(self) -> FeedbackRequest:
        if (self.image_id is None) == (self.image is None):
            raise ValueError(
                "send either image_id (an image generated with this key) or image_base64 "
                "with its context, not both"
                if self.image_id is not None
                else "send image_id (an image generated with this key) or image_base64 with "
                "its context"
            )
        if self.image is not None and self.context is None:
            raise ValueError("context: required with image_base64 (account and posted_at)")
        if self.context is not None and self.context.posted_at is None:
            raise ValueError(
                "context.posted_at: required: when the creative was posted places its KPI "
                "in time (training tests on the most recent posts)"
            )
        return self


class FeedbackRecord(Contract):
    """A stored observation, as its owner sees it."""

    id: str = Field(description="The record's id: GET /v1/feedback/{id}.")
    creative_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the creative's image file: the same whether it was sent by "
        "image_id or as bytes.",
    )
    image_id: str | None = Field(description="The generated image it was given for, if named.")
    context: Context
    kpi_name: KpiName
    kpi_value: float
    revision: int = Field(ge=1, description="1 when recorded; each applied correction adds 1.")
    created_at: datetime
    updated_at: datetime


class FeedbackPage(Contract):
    """One page of a key's feedback, newest first."""

    items: list[FeedbackRecord]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; none when this is the last."
    )


class FeedbackFilter(Contract):
    """The query of GET /v1/feedback: which of the key's records, and which page."""

    account: AccountName | None = Field(default=None, description="Only this account's.")
    kpi_name: KpiName | None = Field(default=None, description="Only this KPI's.")
    creative_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="Only this creative's."
    )
    cursor: str | None = Field(
        default=None, max_length=64, description="The `next_cursor` of the previous page."
    )
    limit: int = Field(default=50, ge=1, le=MAX_FEEDBACK_PAGE, description="Records per page.")


# --- checkpoints and retraining ---------------------------------------------------------
# What the training worker decided about BoigLLM checkpoints (retrain: promote or reject a
# candidate; an operator: promote or roll back), as the gateway shows it: GET /v1/checkpoints
# and /v1/retrain/decisions. The trainer writes the records (services.common.retraining).

MAX_DECISION_PAGE = 100
CheckpointName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class CheckpointInfo(Contract):
    """One published version of a registry entry, as last recorded by the trainer."""

    name: CheckpointName = Field(description="Registry entry, e.g. boigllm.")
    version: str = Field(description="The version id: UTC publish time and 8 hex digits.")
    kind: str = Field(description="Checkpoint format, e.g. boigllm-lora.")
    created_at: datetime = Field(description="When it was published.")
    current: bool = Field(description="The version the registry's pointer names: served now.")
    base_model: str = Field(description="The base model it adapts, name@version.")
    dataset_version: str = Field(description="The dataset version it was trained on.")
    dataset_sha256: str = Field(description="SHA-256 of that dataset's manifest: the data hash.")
    metrics: dict[str, float] = Field(description="Its training metrics, by name.")


class CheckpointList(Contract):
    """The versions of one registry entry, newest first."""

    name: CheckpointName
    current: str | None = Field(description="The version served now; none before a publish.")
    items: list[CheckpointInfo]
    recorded_at: datetime | None = Field(
        description="When the trainer last recorded the registry's state (after every "
        "publish, promotion, rejection and rollback it makes); none when it never did."
    )


class MetricDifference(Contract):
    """The candidate's improvement over the current checkpoint on one metric, with its
    paired bootstrap confidence interval (posts resampled, both models on the same ones)."""

    value: float = Field(description="Mean improvement; positive: the candidate is better.")
    low: float = Field(description="Lower end of the confidence interval.")
    high: float = Field(description="Upper end of the confidence interval.")


class CheckpointEvaluation(Contract):
    """Both checkpoints measured on the same held-out posts: the most recent ones of the
    dataset's test split (temporal), none of which either model was trained on."""

    metric: str = Field(description="The metric the decision rests on.")
    better: Literal["lower", "higher"] = Field(description="Which direction of it is better.")
    confidence: float = Field(gt=0, lt=1, description="Level of the confidence intervals.")
    resamples: int = Field(ge=1, description="Bootstrap resamples.")
    posts: int = Field(ge=0, description="Held-out posts both models were measured on.")
    window_start: datetime | None = Field(description="Post time of the earliest of them.")
    window_end: datetime | None = Field(description="Post time of the latest of them.")
    candidate: dict[str, float] = Field(description="The candidate's metrics, by name.")
    current: dict[str, float] = Field(description="The current checkpoint's metrics, by name.")
    improvement: dict[str, MetricDifference] = Field(
        description="Candidate over current, by metric: current minus candidate for losses, "
        "candidate minus current for accuracies, so positive is better throughout."
    )


class FeedbackFold(Contract):
    """What a retrain folded into the dataset from KPI feedback."""

    rows: int = Field(ge=0, description="Feedback rows in the dataset version trained on.")
    new: int = Field(ge=0, description="Of those, new or corrected since the previous version.")
    removed: int = Field(ge=0, description="Feedback rows the previous version had and this lost.")
    skipped: int = Field(ge=0, description="Records left out (duplicates, missing images).")
    trusted_keys: int | None = Field(
        description="How many API keys' feedback was trusted; none: every key's."
    )


RetrainAction = Literal["promote", "reject", "rollback"]


class RetrainDecision(Contract):
    """One move (or refusal to move) of a registry entry's pointer, with why."""

    id: str
    checkpoint: CheckpointName = Field(description="Registry entry, e.g. boigllm.")
    action: RetrainAction = Field(
        description="promote: the pointer moved to the candidate; reject: it stayed; "
        "rollback: an operator moved it back to an earlier version."
    )
    trigger: Literal["retrain", "operator"] = Field(
        description="retrain: decided by the evaluation rule; operator: by a person's command."
    )
    reason: str = Field(description="Why, in words.")
    decided_at: datetime
    previous_version: str | None = Field(description="The version served before.")
    current_version: str | None = Field(description="The version served after.")
    candidate_version: str | None = Field(
        description="The version decided about: the retrained candidate, or the target of an "
        "operator's move."
    )
    dataset_version: str | None = Field(description="The dataset version it was trained on.")
    dataset_sha256: str | None = Field(description="SHA-256 of that dataset's manifest.")
    evaluation: CheckpointEvaluation | None = Field(
        description="Both checkpoints' metrics on the held-out window; none for an operator's "
        "move or a candidate refused before it was measured."
    )
    feedback: FeedbackFold | None = Field(description="What the retrain folded in.")
    run_id: str | None = Field(description="The training run that made it, if any.")


class RetrainDecisionPage(Contract):
    """Decisions, newest first."""

    items: list[RetrainDecision]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; none when this is the last."
    )


class RetrainDecisionFilter(Contract):
    """The query of GET /v1/retrain/decisions."""

    checkpoint: CheckpointName | None = Field(default=None, description="Only this entry's.")
    action: RetrainAction | None = Field(default=None, description="Only this action's.")
    cursor: str | None = Field(
        default=None, max_length=64, description="The `next_cursor` of the previous page."
    )
    limit: int = Field(default=20, ge=1, le=MAX_DECISION_PAGE, description="Decisions per page.")
