"""The artifact store, local folder and S3 bucket alike: content addressing, whole writes, key
safety, the write time retention reads; then what only the S3 store has (settings, outages)."""

from __future__ import annotations

import hashlib
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.errors import BackendError, InvalidInput, NotFound, UpstreamError
from services.common.s3_storage import S3ArtifactStore
from services.common.settings import ArtifactStoreSettings
from services.common.storage import LocalArtifactStore, open_artifact_store
from tests.artifact_stores import LONG_AGO, StoreUnderTest, s3_credentials, s3_settings


def test_put_get_roundtrip_is_content_addressed(artifact_backend: StoreUnderTest) -> None:
    store = artifact_backend.store
    ref = store.put(b"png bytes", namespace="images", suffix=".png")
    assert ref.sha256 == hashlib.sha256(b"png bytes").hexdigest()
    assert ref.key == f"images/{ref.sha256}.png"
    assert ref.size == len(b"png bytes")
    assert store.get(ref.key) == b"png bytes"
    assert store.exists(ref.key)
    assert store.put(b"png bytes", namespace="images", suffix=".png") == ref
    # One blob under its key and nothing else: no temporary file left, nothing outside the
    # S3 prefix (the listing refuses keys outside it).
    assert artifact_backend.names() == [ref.key]


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "images/../../x", "images/notahash"])
def test_malicious_keys_are_refused(artifact_backend: StoreUnderTest, key: str) -> None:
    store = artifact_backend.store
    for call in (store.get, store.exists, store.delete):
        with pytest.raises(InvalidInput):
            call(key)
    with pytest.raises(InvalidInput):
        store.put(b"x", namespace="../images")


def test_missing_artifact_is_not_found(artifact_backend: StoreUnderTest) -> None:
    store = artifact_backend.store
    with pytest.raises(NotFound):
        store.get("images/" + "0" * 64)
    assert not store.exists("images/" + "0" * 64)
    assert not store.delete("images/" + "0" * 64)


def test_a_blob_stored_again_is_written_again(artifact_backend: StoreUnderTest) -> None:
    store = artifact_backend.store
    ref = store.put(b"bytes", namespace="generated", suffix=".png")
    started = datetime.now(UTC)
    artifact_backend.backdate(ref.key, LONG_AGO)
    assert store.put(b"bytes", namespace="generated", suffix=".png") == ref  # and again now
    assert not store.delete(ref.key, unless_written_since=started - timedelta(seconds=5))
    assert store.exists(ref.key)
    assert store.delete(ref.key)
    assert not store.delete(ref.key)
    assert not store.exists(ref.key)


def test_only_a_blob_written_before_the_given_time_is_deleted(
    artifact_backend: StoreUnderTest,
) -> None:
    store = artifact_backend.store
    ref = store.put(b"bytes", namespace="generated", suffix=".png")
    since = datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    # Written 0.2 s after the pass started. S3's Last-Modified reads whole seconds (12:00:00),
    # which must not pass for "before 12:00:00.5".
    artifact_backend.backdate(ref.key, since + timedelta(milliseconds=200))
    assert not store.delete(ref.key, unless_written_since=since)
    assert store.exists(ref.key)
    artifact_backend.backdate(ref.key, since - timedelta(seconds=2))
    assert store.delete(ref.key, unless_written_since=since)
    assert not store.exists(ref.key)


def test_the_settings_choose_the_backend(tmp_path: Path) -> None:
    local = open_artifact_store(ArtifactStoreSettings(artifact_root=tmp_path))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path
    with pytest.raises(ValidationError, match="needs artifact_s3_bucket"):
        ArtifactStoreSettings(artifact_backend="s3")
    with pytest.raises(ValidationError, match="not an http"):
        ArtifactStoreSettings(artifact_s3_endpoint_url="minio:9000")
    with pytest.raises(ValidationError):
        ArtifactStoreSettings(artifact_s3_prefix="no-trailing-slash")
    with pytest.raises(ValidationError):
        ArtifactStoreSettings(artifact_s3_bucket="Not_A_Bucket")


def test_the_services_read_the_store_from_their_own_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.gateway.settings import GatewaySettings
    from services.generator.settings import GeneratorSettings

    for prefix, settings_class in (
        ("BOIG_GATEWAY_", GatewaySettings),
        ("BOIG_GENERATOR_", GeneratorSettings),
    ):
        monkeypatch.setenv(f"{prefix}ARTIFACT_BACKEND", "s3")
        monkeypatch.setenv(f"{prefix}ARTIFACT_S3_BUCKET", "boig-images")
        monkeypatch.setenv(f"{prefix}ARTIFACT_S3_PREFIX", "prod/")
        settings = settings_class()
        assert (settings.artifact_backend, settings.artifact_s3_bucket) == ("s3", "boig-images")
        assert settings.artifact_s3_prefix == "prod/"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_s3_server_is_an_upstream_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # UpstreamError is what the generator retries and the gateway answers with 502.
    s3_credentials(monkeypatch)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = open_artifact_store(
        s3_settings(endpoint, "boig-nowhere", artifact_s3_timeout_seconds=1)
    )
    with pytest.raises(UpstreamError, match="unreachable"):
        store.put(b"bytes", namespace="generated", suffix=".png")
    with pytest.raises(UpstreamError):
        store.exists("generated/" + "0" * 64)


def test_a_missing_bucket_is_a_backend_error(
    moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A configuration error: retrying will not create the bucket.
    s3_credentials(monkeypatch)
    store = open_artifact_store(s3_settings(moto_s3_endpoint, "boig-never-created"))
    assert isinstance(store, S3ArtifactStore)
    with pytest.raises(BackendError, match="NoSuchBucket"):
        store.put(b"bytes", namespace="generated", suffix=".png")
