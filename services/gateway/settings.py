"""The gateway's settings (env prefix ``BOIG_GATEWAY_``); unsafe combinations are refused."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.db import default_database_url
from services.common.settings import (
    ArtifactStoreSettings,
    BatchLimits,
    ImageLimits,
    ServiceSettings,
)

RATE_LIMIT_STORAGE_SCHEMES = frozenset({"memory", "redis", "rediss", "redis+unix"})


class GatewaySettings(ArtifactStoreSettings, ServiceSettings):
    """Public-facing limits, where the internal services live, and the key/limit stores."""

    model_config = SettingsConfigDict(env_prefix="BOIG_GATEWAY_", extra="ignore", frozen=True)

    port: int = Field(default=8100, ge=0, le=65535, description="TCP port to bind.")
    database_url: str = Field(
        default_factory=default_database_url,
        description=(
            "SQLAlchemy URL of the database holding API keys, generation jobs and KPI "
            "feedback: sqlite:///path (embedded default, under BOIG_HOME) or "
            "postgresql://user@host/db."
        ),
    )
    scorer_url: str = Field(
        default="http://127.0.0.1:8103", description="Base URL of the internal scorer service."
    )
    describer_url: str = Field(
        default="http://127.0.0.1:8102", description="Base URL of the internal describer service."
    )
    upstream_timeout_seconds: float = Field(
        default=180.0,
        gt=0,
        description=(
            "Timeout of one call to an internal service, in seconds. Longer than the scorer's own "
            "upstream timeout, so that the scorer reports its upstream's failure, not us."
        ),
    )
    max_json_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description=(
            "Largest body of a route that carries no images (/v1/describe, /v1/generate): a "
            "context and a target fit in a few KiB; larger bodies get 413 before they are read."
        ),
    )
    batch_limits: BatchLimits = Field(
        default_factory=BatchLimits,
        description=(
            "Most creatives one /v1/score request may carry; read from BOIG_BATCH_MAX_ITEMS, "
            "as in every service."
        ),
    )
    rate_limit: str = Field(
        default="60/minute",
        description=(
            "Per-API-key request limit in the `limits` notation, e.g. '60/minute' or "
            "'10/second;1000/hour' (all must hold). Counts every authenticated /v1 request."
        ),
    )
    rate_limit_strategy: Literal["moving-window", "fixed-window"] = Field(
        default="moving-window",
        description=(
            "moving-window is exact (no double bursts at window edges); fixed-window costs one "
            "counter per key and window, cheaper on Redis at high request rates."
        ),
    )
    rate_limit_storage_url: str = Field(
        default="memory://",
        description=(
            "Where rate-limit counters live: memory:// (one process only) or "
            "redis://host:6379 (shared by every gateway replica)."
        ),
    )
    rate_limit_key_prefix: str = Field(
        default="boig_gateway",
        pattern=r"^[A-Za-z0-9_:-]{1,64}$",
        description="Prefix of the rate-limit keys in shared storage (Redis).",
    )
    poll_rate_limit: str = Field(
        default="300/minute",
        description=(
            "Per-API-key limit on reads of job states and images (GET /v1/jobs/{id}, "
            "GET /v1/images/{id}), in the `limits` notation; counted apart from rate_limit so "
            "that polling a job does not eat the key's budget for work."
        ),
    )
    auth_failure_limit: str = Field(
        default="20/minute",
        description=(
            "Failed authentications allowed per client address and key prefix, in the "
            "`limits` notation; beyond it that address gets 429 for that prefix before the "
            "key is looked up (its other users' keys still work). Behind a proxy the address "
            "comes from X-Forwarded-For only for proxies listed in uvicorn's "
            "FORWARDED_ALLOW_IPS."
        ),
    )
    auth_failure_address_limit: str = Field(
        default="200/minute",
        description=(
            "Failed authentications allowed per client address whatever the prefix: beyond "
            "it every key from that address gets 429 for the rest of the window (guessing "
            "across prefixes). Keep it well above auth_failure_limit."
        ),
    )
    rate_limit_fail_open: bool = Field(
        default=False,
        description=(
            "When the rate-limit storage is unreachable: false refuses requests with 503 "
            "(limits hold), true lets them through (logged). Keys are checked either way."
        ),
    )
    max_queued_jobs: int = Field(
        default=100,
        ge=1,
        description=(
            "Backpressure: while this many generation jobs wait in the queue, POST /v1/generate "
            "answers 503 with Retry-After."
        ),
    )
    queue_retry_after_seconds: float = Field(
        default=10.0, gt=0, description="The Retry-After given with a full-queue 503, in seconds."
    )
    image_limits: ImageLimits = Field(
        default_factory=ImageLimits,
        description="Size, pixel and format limits applied to every creative before forwarding.",
    )
    playground: bool = Field(
        default=True,
        description=(
            "Serve the playground page at /playground: score, generate and browse checkpoints "
            "in a browser with an API key pasted into it. The page holds no data and every "
            "call it makes needs the key; false answers 404 there."
        ),
    )

    @field_validator(
        "rate_limit", "poll_rate_limit", "auth_failure_limit", "auth_failure_address_limit"
    )
    @classmethod
    def _parseable_limit(cls, value: str) -> str:
        try:
            items = parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not in the limits notation: {exc}") from exc
        if not items or any(item.amount < 1 for item in items):
            raise ValueError(f"{value!r} must allow at least one request per window")
        return value

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
            raise ValueError(
                f"rate_limit_storage_url scheme {scheme!r} is not one of "
                f"{sorted(RATE_LIMIT_STORAGE_SCHEMES)}"
            )
        return value

    @model_validator(mode="after")
    def _safe(self) -> GatewaySettings:
        # A creative travels base64-encoded in JSON (4/3 larger): one at the limit must fit a body.
        if self.image_limits.max_bytes * 4 // 3 > self.max_body_bytes:
            raise ValueError(
                f"image_limits.max_bytes ({self.image_limits.max_bytes}) cannot fit in a request "
                f"body of max_body_bytes ({self.max_body_bytes}) once base64-encoded"
            )
        return self
