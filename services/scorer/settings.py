"""The scorer's settings (env prefix ``BOIG_SCORER_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BatchLimits, ServiceSettings
from services.scorer.rewards import DEFAULT_COLOR_SCALE, MatchWeights


class ScorerSettings(ServiceSettings):
    """Where the upstream services live, batch limits and the weights of the match reward."""

    model_config = SettingsConfigDict(env_prefix="BOIG_SCORER_", extra="ignore", frozen=True)

    port: int = Field(default=8103, ge=0, le=65535, description="TCP port to bind.")
    featurizer_url: str = Field(
        default="http://127.0.0.1:8101", description="Base URL of the featurizer service."
    )
    describer_url: str = Field(
        default="http://127.0.0.1:8102", description="Base URL of the describer service."
    )
    upstream_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description=(
            "Timeout of one call to the featurizer or describer, in seconds. The describer runs "
            "an LLM, so this must cover its worst-case generation time on the slowest backend."
        ),
    )
    batch_limits: BatchLimits = Field(
        default_factory=BatchLimits,
        description=(
            "Most creatives one /score request may carry (they go to the featurizer and the "
            "describer as one batch); read from BOIG_BATCH_MAX_ITEMS, as in every service."
        ),
    )
    weight_colors: float = Field(
        default=0.5,
        ge=0,
        description="Match reward: weight of the colour-palette similarity (before renormalizing).",
    )
    weight_tones: float = Field(
        default=0.2, ge=0, description="Match reward: weight of the tone agreement."
    )
    weight_objects: float = Field(
        default=0.3, ge=0, description="Match reward: weight of the object label/box agreement."
    )
    weight_caption: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Match reward: weight of the caption similarity. 0 by default because the featurizer "
            "does not caption yet; the term is skipped whenever either side lacks a caption."
        ),
    )
    color_scale: float = Field(
        default=DEFAULT_COLOR_SCALE,
        gt=0,
        description=(
            "CIE76 ΔE (in Lab units) at which the similarity of two colours falls to 1/e. "
            "About 2.3 is a just-noticeable difference; 25 treats 'same hue family' as close."
        ),
    )

    @model_validator(mode="after")
    def _some_weight(self) -> ScorerSettings:
        self.match_weights()  # raises ValueError (→ ValidationError) when every weight is 0
        return self

    def match_weights(self) -> MatchWeights:
        return MatchWeights(
            colors=self.weight_colors,
            tones=self.weight_tones,
            objects=self.weight_objects,
            caption=self.weight_caption,
        )
