"""Settings every service shares; each service subclasses with its own env prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.contracts import MAX_BATCH_IMAGES
from services.common.errors import InvalidInput
from services.common.logging import LogFormat


def http_url(value: str) -> str:
    """A base URL setting: http(s) only, without a trailing slash (paths are appended)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def checkpoint_registry(home: Path) -> Path:
    """The checkpoint registry under a BOIG home: where `make train-llm` publishes and what
    `make demo` serves when it holds a checkpoint."""
    return home / "registry"


def artifact_store_root(home: Path) -> Path:
    """The local artifact store under a BOIG home: generated images, shared by the generator
    (writes) and the gateway (serves)."""
    return home / "artifacts"


def boig_home() -> Path:
    """Where prepared models, the artifact store and the embedded database live."""
    configured = os.environ.get("BOIG_HOME")
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "boig"


def default_history_path() -> Path:
    """The accounts' ingested history that the describer reads for retrieval-augmented
    prompts; ingestion refreshes it."""
    return boig_home() / "history" / "history.json"


WORLD_SD_NAME = "world-sd"


def default_world_sd_dir() -> Path:
    """Where ``make models`` puts the world SD (a small Stable Diffusion trained on the
    synthetic world): the generator's default pipeline."""
    return boig_home() / "models" / WORLD_SD_NAME


# The other default model folders under BOIG_HOME/models, named here rather than beside their
# preparers so that settings modules read them without importing preparation code.
SMOLLM2_NAME = "smollm2-135m-instruct"
TINY_SD_NAME = "tiny-sd"
SHAPES_DETECTOR_NAME = "yolo-shapes"


def default_smollm2_dir() -> Path:
    """Where ``make models`` puts the prepared SmolLM2; the describer looks there by default."""
    return boig_home() / "models" / SMOLLM2_NAME


def default_tiny_pipeline_dir() -> Path:
    """Where ``make models`` puts the tiny random SD pipeline (tests, the evaluation's floor)."""
    return boig_home() / "models" / TINY_SD_NAME


def default_shapes_detector_dir() -> Path:
    """Where ``make models`` puts the synthetic-shapes YOLO; the featurizer looks there by
    default."""
    return boig_home() / "models" / SHAPES_DETECTOR_NAME


def log_format_field() -> Any:
    """The ``log_format`` field every process's settings carry (HTTP services and workers)."""
    return Field(
        default="text",
        description=(
            "text: one human-readable line per record; json: one JSON object per line (time, "
            "level, logger, message, request_id, service, exc_info) for a log collector."
        ),
    )


class ServiceSettings(BaseSettings):
    """Fields every HTTP service has. Subclasses set ``env_prefix`` (BOIG_<SERVICE>_)."""

    model_config = SettingsConfigDict(env_prefix="BOIG_", extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to bind.")
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: LogFormat = log_format_field()
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes; larger bodies get 413.",
    )
    shutdown_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "On SIGTERM, requests in flight get this long to finish before their connections "
            "are closed (uvicorn's graceful shutdown); keep it below the orchestrator's kill "
            "grace period."
        ),
    )
    keep_alive_seconds: float = Field(
        default=10.0,
        ge=5,
        description=(
            "An idle client connection is closed after this long. Longer than our clients "
            "keep idle connections (4 s), so that a client never reuses one being closed."
        ),
    )
    health_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "GET /health reuses its readiness answer for this long, so that frequent or "
            "anonymous probes do not reach the database and every upstream each time; 0 "
            "checks on every probe."
        ),
    )


class ArtifactStoreSettings(BaseSettings):
    """Where generated images live: fields shared by the services that read or write the
    artifact store (gateway, generator); each subclass reads them under its own env prefix.

    S3 credentials are not settings: boto3 takes them from its usual chain (AWS_ACCESS_KEY_ID
    and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web-identity token, an instance role), so no
    secret ever sits in a settings dump or in .env.example.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    artifact_backend: Literal["local", "s3"] = Field(
        default="local",
        description=(
            "local: a folder (artifact_root) that every reader and writer mounts, one host or "
            "a shared volume; s3: an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2) that "
            "several hosts share. Gateway and generator must name the same store."
        ),
    )
    artifact_root: Path = Field(
        default_factory=lambda: artifact_store_root(boig_home()),
        description="local backend: the artifact store folder (generator writes, gateway reads).",
    )
    artifact_s3_bucket: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="s3 backend: the bucket (it must exist; the services never create it).",
    )
    artifact_s3_prefix: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9_.-]+/)*$",
        description=(
            "s3 backend: key prefix of every blob, empty or ending in '/' (e.g. 'boig/prod/'), "
            "so several deployments can share one bucket."
        ),
    )
    artifact_s3_endpoint_url: str | None = Field(
        default=None,
        description=(
            "s3 backend: endpoint of an S3-compatible server, e.g. http://minio:9000. Unset: "
            "AWS S3 of the region."
        ),
    )
    artifact_s3_region: str | None = Field(
        default=None,
        description="s3 backend: region name. Unset: boto3's (AWS_REGION, AWS_DEFAULT_REGION).",
    )
    artifact_s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description=(
            "s3 backend: bucket in the path (http://host/bucket/key: MinIO and most servers "
            "without wildcard DNS) or in the host name (virtual, AWS); auto lets boto3 choose."
        ),
    )
    artifact_s3_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "s3 backend: connect and read timeout of one request, in seconds; boto3 retries a "
            "failed request (standard mode, 3 attempts) before the caller sees an upstream error."
        ),
    )

    @field_validator("artifact_s3_endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> ArtifactStoreSettings:
        if self.artifact_backend == "s3" and not self.artifact_s3_bucket:
            raise ValueError("artifact_backend 's3' needs artifact_s3_bucket")
        return self


class ImageLimits(BaseSettings):
    """Hard limits applied before any image is decoded (shared by every image consumer)."""

    model_config = SettingsConfigDict(env_prefix="BOIG_IMAGE_", extra="ignore", frozen=True)

    max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Largest encoded image, in bytes."
    )
    max_pixels: int = Field(
        default=24_000_000,
        ge=1,
        description="Largest width x height; bigger images (and decompression bombs) are refused.",
    )
    max_side: int = Field(default=8192, ge=1, description="Largest width or height, in pixels.")
    max_request_pixels: int = Field(
        default=64_000_000,
        ge=1,
        description=(
            "Largest sum of width x height over the images of one request, checked from their "
            "headers before any is decoded: a few KB of flat PNGs can claim gigabytes of pixels."
        ),
    )
    formats: frozenset[str] = Field(
        default=frozenset({"PNG", "JPEG", "WEBP", "GIF"}),
        description=(
            "Pillow format names accepted. An animated image (GIF, APNG, animated WebP) is "
            "analysed from its first frame, and the answer says so."
        ),
    )


class BatchLimits(BaseSettings):
    """The most images (or their verbalizations) one request may carry, read under one name by
    every service that takes a batch: the gateway and scorer (creatives), the featurizer
    (images) and the describer (verbalizations to rate). The scorer sends its whole batch on to
    the featurizer and the describer as one request, so one value keeps every hop in step."""

    model_config = SettingsConfigDict(env_prefix="BOIG_BATCH_", extra="ignore", frozen=True)

    max_items: int = Field(
        default=32,
        ge=1,
        le=MAX_BATCH_IMAGES,
        description=(
            "Most creatives, images or verbalizations one request may carry, in every "
            f"service; more get 422. At most {MAX_BATCH_IMAGES} (the contract's batch "
            "ceiling). The generator scores a job's images in one request: keep "
            "BOIG_GENERATION_MAX_CANDIDATES at or below it."
        ),
    )

    def check(self, count: int, what: str) -> None:
        """Raise InvalidInput when a request carries ``count`` ``what`` (e.g. "creatives"),
        more than the limit."""
        if count > self.max_items:
            raise InvalidInput(f"{count} {what} in one request; the limit is {self.max_items}")
