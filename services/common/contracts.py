"""Wire models shared by every service: the contract between them (design §3–§5).

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


class Context(Contract):
    """Where and for whom a creative is posted."""

    account: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$", description="Brand account."
    )
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
    name: str = Field(default="likes", pattern=r"^[a-z][a-z0-9_]{0,31}$", description="KPI name.")
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
    kpi_name: str = Field(default="likes", pattern=r"^[a-z][a-z0-9_]{0,31}$")
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


class ScoreResponse(Contract):
    reward: RewardName
    weights: dict[str, float] = Field(description="Weight of each component in the total.")
    targets: list[TargetDescription] = Field(
        description="The descriptions the reward compared with."
    )
    results: list[CreativeScore] = Field(description="Best first.")
    models: dict[str, ModelInfo]
