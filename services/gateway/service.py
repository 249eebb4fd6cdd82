"""The gateway's logic: validate public requests, then forward them to the internal services.

Every creative is checked here, under the shared image limits, without decoding its pixels:
garbage, wrong formats, oversize images, decompression bombs and broken PNG containers are
refused at the edge with a message naming the creative. The featurizer decodes every pixel
under the same limits and names the creative if a full decode fails. No URLs are fetched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from services.common.clients import DescriberClient, ScorerClient
from services.common.contracts import (
    Context,
    Creative,
    DescribeRequest,
    DescribeResponse,
    KpiTarget,
    RewardName,
    ScoreRequest,
    ScoreResponse,
    TargetDescription,
)
from services.common.errors import InvalidInput, PayloadTooLarge, validation_message
from services.common.images import check_image, check_pixel_budget
from services.common.settings import BatchLimits, ImageLimits

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
_ID_MAX = 100  # leaves room under the 128-character ImageId for a "-NN" uniqueness suffix


class ScoreSpec(BaseModel):
    """The JSON ``request`` part of a multipart /v1/score: everything but the creatives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: Context
    target: KpiTarget = Field(default_factory=KpiTarget)
    reward: RewardName = "match"
    targets: list[TargetDescription] = Field(default_factory=list)
    max_edits: int = 0  # bounds checked by ScoreRequest, whose message names the field


class UploadedCreative(BaseModel):
    """One file part of a multipart /v1/score, already read into memory."""

    model_config = ConfigDict(frozen=True)

    filename: str | None
    data: bytes


def creative_id_from_filename(filename: str | None, taken: set[str], index: int) -> str:
    """The filename's stem, reduced to the ImageId alphabet and made unique among ``taken``."""
    stem = ""
    if filename:
        # Browsers on Windows send backslashes; only the last path component is a name.
        stem = PurePosixPath(filename.replace("\\", "/")).name
        stem = PurePosixPath(stem).stem if "." in stem.strip(".") else stem
        stem = _ID_UNSAFE.sub("_", stem).strip("_.")[:_ID_MAX]
    base = stem or f"creative-{index + 1}"
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}-{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


def build_score_request(
    spec_json: str | bytes, uploads: Sequence[UploadedCreative], *, limits: ImageLimits
) -> ScoreRequest:
    """Turn the multipart form of /v1/score into a ScoreRequest."""
    try:
        spec = ScoreSpec.model_validate_json(spec_json)
    except ValidationError as exc:
        message = validation_message(exc, whole=None)
        raise InvalidInput(f"the 'request' part is not valid: {message}") from exc
    taken: set[str] = set()
    creatives = []
    for index, upload in enumerate(uploads):
        creative_id = creative_id_from_filename(upload.filename, taken, index)
        if len(upload.data) > limits.max_bytes:
            raise PayloadTooLarge(
                f"creative {creative_id!r} is {len(upload.data)} bytes; "
                f"the limit is {limits.max_bytes}"
            )
        if not upload.data:
            raise InvalidInput(f"creative {creative_id!r} is empty")
        creatives.append(Creative(id=creative_id, data=upload.data))
    if not creatives:
        raise InvalidInput("send at least one 'creatives' file part")
    try:
        return ScoreRequest(
            context=spec.context,
            target=spec.target,
            reward=spec.reward,
            creatives=creatives,
            targets=spec.targets,
            max_edits=spec.max_edits,
        )
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc, whole=None)) from exc


class Gateway:
    """Validation and fan-out behind the public routes."""

    def __init__(
        self,
        *,
        scorer: ScorerClient,
        describer: DescriberClient,
        image_limits: ImageLimits,
        batch_limits: BatchLimits,
    ) -> None:
        self._scorer = scorer
        self._describer = describer
        self.image_limits = image_limits
        self.batch_limits = batch_limits

    def check_creative_count(self, count: int) -> None:
        self.batch_limits.check(count, "creatives")

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        self.check_creative_count(len(request.creatives))
        # Decoding is CPU-bound (up to max_pixels per creative): keep it off the event loop.
        await run_in_threadpool(self._check_creatives, request.creatives)
        return await self._scorer.score(request)

    async def describe(self, request: DescribeRequest) -> DescribeResponse:
        return await self._describer.describe(request.context, request.target)

    def _check_creatives(self, creatives: Sequence[Creative]) -> None:
        sizes = []
        for creative in creatives:
            what = f"creative {creative.id!r}"
            # Header, size, bomb and container checks only: the featurizer decodes every
            # pixel anyway, under the same limits, and names this creative if that fails.
            sizes.append(check_image(creative.data, limits=self.image_limits, what=what))
        check_pixel_budget(sizes, limits=self.image_limits)
