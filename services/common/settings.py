"""Settings every service shares; each service subclasses with its own env prefix."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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


class ServiceSettings(BaseSettings):
    """Fields every HTTP service has. Subclasses set ``env_prefix`` (BOIG_<SERVICE>_)."""

    model_config = SettingsConfigDict(env_prefix="BOIG_", extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to bind.")
    log_level: str = Field(default="INFO", description="Python logging level name.")
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
