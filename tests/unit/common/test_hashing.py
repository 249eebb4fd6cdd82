"""file_sha256: the digest of a file's bytes, whatever their size relative to the read chunk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.hashing import CHUNK_BYTES, file_sha256

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(("data", "expected"), [(b"", EMPTY_SHA256), (b"abc", ABC_SHA256)])
def test_known_digests(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "file"
    path.write_bytes(data)
    assert file_sha256(path) == expected


def test_files_longer_than_a_chunk_hash_every_byte(tmp_path: Path) -> None:
    # The last bytes sit past the first chunk: a hash that stopped after one read differs.
    data = bytes(range(256)) * (CHUNK_BYTES // 256) + b"tail"
    path = tmp_path / "file"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "absent")
