"""Stand-in describer and scorer on one loopback port, for the generator's reliability tests.

They answer the real contracts (DescribeResponse, ScoreResponse) at once, so a job's time is
the queue's and the pipeline's. The scorer's reward is the image's mean brightness, so a
ranking is real and checkable. ``POST /_control`` makes the next calls fail with a typed error.

Run: ``python tests/reliability/stub_upstreams.py PORT``.
"""

from __future__ import annotations

import io
import sys
from typing import Annotated

import numpy as np
import uvicorn
from fastapi import Depends
from PIL import Image
from pydantic import BaseModel

from services.common import wire
from services.common.app import create_service_app
from services.common.contracts import (
    ColorSwatch,
    CreativeScore,
    DescribeRequest,
    DescribeResponse,
    DetectedObject,
    KpiLevel,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
    Tone,
    Verbalization,
)
from services.common.errors import BoigError, error_from_payload

LOOKS = {
    KpiLevel.HIGH: Verbalization(
        colors=[ColorSwatch(name="orange", rgb=(250, 140, 20), coverage=0.6)],
        tones=[Tone.WARM, Tone.BRIGHT],
        objects=[DetectedObject(label="circle", confidence=0.9, box=(0.1, 0.1, 0.4, 0.4))],
    ),
    KpiLevel.MEDIUM: Verbalization(
        colors=[ColorSwatch(name="gray", rgb=(128, 128, 128), coverage=0.7)]
    ),
    KpiLevel.LOW: Verbalization(
        colors=[ColorSwatch(name="navy", rgb=(10, 20, 90), coverage=0.8)],
        tones=[Tone.DARK, Tone.COOL],
    ),
}


class Control(BaseModel):
    error_type: str | None = None
    message: str = "stub failure"
    levels: list[KpiLevel] | None = None
    """Fail /describe for these target levels only (None: every call fails)."""


def brightness(data: bytes) -> float:
    image = Image.open(io.BytesIO(data)).convert("L")
    return float(np.asarray(image, dtype=np.float64).mean() / 255.0)


def create_app() -> object:
    app = create_service_app(service="stub-upstreams", version="0", max_body_bytes=1 << 26)
    failure: dict[str, BoigError | None] = {"error": None}
    failing_levels: dict[str, list[KpiLevel] | None] = {"levels": None}

    @app.post("/_control")
    async def control(body: Control) -> dict[str, str | None]:
        failure["error"] = (
            error_from_payload(
                {"error": {"type": body.error_type, "message": body.message}}, status_code=500
            )
            if body.error_type
            else None
        )
        failing_levels["levels"] = body.levels
        return {"error_type": body.error_type}

    @app.post("/describe")
    async def describe(request: DescribeRequest) -> DescribeResponse:
        levels = failing_levels["levels"]
        if failure["error"] is not None and (levels is None or request.target.level in levels):
            raise failure["error"]
        return DescribeResponse(
            verbalization=LOOKS[request.target.level],
            text=f"stub description for {request.target.level.value}",
            repairs=[],
            model=ModelInfo(name="stub-describer", version="1"),
            prompt_version="stub",
            cached=False,
        )

    @app.post("/score")
    async def score(
        # The generator's client sends MessagePack (raw image bytes), read as the scorer does.
        request: Annotated[ScoreRequest, Depends(wire.body_reader(ScoreRequest))],
    ) -> ScoreResponse:
        if failure["error"] is not None and failing_levels["levels"] is None:
            raise failure["error"]
        totals = {c.id: brightness(c.data) for c in request.creatives}
        ranked = sorted(totals, key=lambda cid: -totals[cid])
        return ScoreResponse(
            reward=request.reward,
            weights={"brightness": 1.0},
            targets=[],
            results=[
                CreativeScore(
                    id=cid,
                    rank=rank,
                    total=totals[cid],
                    breakdown={"brightness": totals[cid]},
                    verbalization=Verbalization(),
                )
                for rank, cid in enumerate(ranked, start=1)
            ],
            models={"scorer": ModelInfo(name="stub-scorer", version="1")},
        )

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")  # type: ignore[arg-type]
