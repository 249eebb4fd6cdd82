"""The local artifact store: content addressing, atomic writes, key safety."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.errors import InvalidInput, NotFound
from services.common.storage import LocalArtifactStore


def test_put_get_roundtrip_is_content_addressed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b"png bytes", namespace="images", suffix=".png")
    assert ref.sha256 == hashlib.sha256(b"png bytes").hexdigest()
    assert ref.key == f"images/{ref.sha256}.png"
    assert store.get(ref.key) == b"png bytes"
    assert store.put(b"png bytes", namespace="images", suffix=".png") == ref
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "images/../../x", "images/notahash"])
def test_malicious_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidInput):
        LocalArtifactStore(tmp_path).get(key)


def test_missing_artifact_is_not_found(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(NotFound):
        store.get("images/" + "0" * 64)
    assert not store.exists("images/" + "0" * 64)
