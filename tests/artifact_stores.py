"""The artifact stores that the store and retention tests run against, each with the two things
a test needs to see behind the Protocol: every name the backend holds, and a blob's write time
set back (retention keeps what was written recently)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.settings import ArtifactStoreSettings
from services.common.storage import ArtifactStore, LocalArtifactStore, open_artifact_store

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
BACKENDS = ("local", "s3")


@dataclass(frozen=True)
class StoreUnderTest:
    store: ArtifactStore
    names: Callable[[], list[str]]
    """Every name the backend holds, relative to the store (temporary files included)."""
    backdate: Callable[[str, datetime], None]
    """Set a blob's write time, as if it had been stored then."""


def local_store(root: Path) -> StoreUnderTest:
    store = LocalArtifactStore(root)

    def names() -> list[str]:
        return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())

    def backdate(key: str, when: datetime) -> None:
        os.utime(root / key, (when.timestamp(), when.timestamp()))

    return StoreUnderTest(store, names, backdate)


@contextmanager
def moto_server() -> Iterator[str]:
    """An S3-compatible server (moto in server mode) on a free loopback port; its endpoint URL.

    It runs in this process, so a test can also reach into its state (``backdate``).
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_settings(endpoint_url: str, bucket: str, **overrides: object) -> ArtifactStoreSettings:
    fields: dict[str, object] = {
        "artifact_backend": "s3",
        "artifact_s3_bucket": bucket,
        "artifact_s3_endpoint_url": endpoint_url,
        "artifact_s3_region": "us-east-1",
        "artifact_s3_prefix": "boig/test/",
        "artifact_s3_addressing_style": "path",
        "artifact_s3_timeout_seconds": 5.0,
    }
    return ArtifactStoreSettings.model_validate(fields | overrides)


def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto takes any credentials; none of the machine's own AWS configuration may leak in."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "boig-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "boig-test")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def s3_store(endpoint_url: str) -> StoreUnderTest:
    """A bucket of its own on the moto server, the store opened from settings as a service
    opens it (so every store test also covers the settings and the client configuration)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from services.common.s3_storage import S3ArtifactStore

    bucket = f"boig-{secrets.token_hex(6)}"
    store = open_artifact_store(s3_settings(endpoint_url, bucket))
    assert isinstance(store, S3ArtifactStore)
    store.client.create_bucket(Bucket=bucket)

    def names() -> list[str]:
        listed = store.client.list_objects_v2(Bucket=bucket).get("Contents", [])
        keys = [item["Key"] for item in listed]
        assert all(key.startswith(store.prefix) for key in keys), keys
        return sorted(key.removeprefix(store.prefix) for key in keys)

    def backdate(key: str, when: datetime) -> None:
        # S3 has no call that sets LastModified: set it in moto's state (naive UTC there).
        stored = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[bucket].keys[store.prefix + key]
        stored.last_modified = when.astimezone(UTC).replace(tzinfo=None)

    return StoreUnderTest(store, names, backdate)
