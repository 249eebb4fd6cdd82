"""The checkpoint registry the trainer publishes to and the describer/generator load from.

Layout: ``<registry>/<name>/versions/<version>/`` (weights + ``manifest.json``) and the pointer
``<registry>/<name>/current`` holding one version. A version folder appears by one rename and the
pointer moves by one ``os.replace``, so a reader sees either the old checkpoint or the new one,
never half of either (design §3).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from services.common.errors import BackendError, InvalidInput, NotFound
from services.common.hashing import CHUNK_BYTES, file_sha256

FORMAT_VERSION: Literal[1] = 1
MANIFEST_FILE = "manifest.json"
POINTER_FILE = "current"
VERSIONS_DIR = "versions"
KIND_BOIGLLM_LORA = "boigllm-lora"
BOIGLLM_CHECKPOINT = "boigllm"
"""The registry entry BoigLLM is published under and the describer serves by default."""
KIND_BOIGSD_LORA = "boigsd-lora"
BOIGSD_CHECKPOINT = "boigsd"
"""The registry entry BoigSD LoRAs are published under and the generator serves by default."""

# Only formats that cannot run code when loaded. Pickle-based weights (torch.load, joblib, ...)
# would execute whatever a tampered file holds, so they never enter the registry.
ALLOWED_SUFFIXES: frozenset[str] = frozenset(
    {".safetensors", ".json", ".txt", ".model", ".md", ".jinja"}
)
_PICKLE_SUFFIXES: frozenset[str] = frozenset(
    {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
VERSION_PATTERN = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_SHA256 = r"^[0-9a-f]{64}$"


class CheckpointError(BackendError):
    """A published checkpoint is unreadable, incomplete or does not match its manifest."""


class CheckpointRejected(InvalidInput):
    """A training output cannot be published as it is (unsafe file type, bad name, empty)."""


# --- manifest ---------------------------------------------------------------------------


def _relative_file_path(value: str) -> str:
    path = PurePosixPath(value)
    if (
        not value
        or path.is_absolute()
        or "\\" in value
        or any(part in ("", ".", "..") for part in value.split("/"))
    ):
        raise ValueError(f"not a plain relative path: {value!r}")
    if value == MANIFEST_FILE:
        raise ValueError(f"{MANIFEST_FILE} is reserved for the manifest itself")
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("created_at must carry a timezone")
    return value.astimezone(UTC)


RelativeFilePath = Annotated[str, AfterValidator(_relative_file_path)]
JsonScalar = str | int | float | bool | None
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
ParameterName = Annotated[str, Field(min_length=1, max_length=64)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelRef(_Frozen):
    """The pretrained model a checkpoint adapts, pinned to exact weights."""

    name: str = Field(
        min_length=1, max_length=300, description="Hub id or local path of the base model."
    )
    version: str = Field(
        min_length=1,
        max_length=128,
        description="Revision, commit or content hash that pins the base weights.",
    )


class DatasetRef(_Frozen):
    """The training data a checkpoint was fitted on."""

    manifest_sha256: str = Field(
        pattern=_SHA256, description="sha256 (hex) of the training dataset's manifest file."
    )
    version: str = Field(
        min_length=1, max_length=128, description="Human-readable dataset version or tag."
    )


class FileDigest(_Frozen):
    """Integrity record of one checkpoint file."""

    sha256: str = Field(pattern=_SHA256, description="sha256 (hex) of the file's bytes.")
    size: int = Field(ge=0, description="File size in bytes.")


class CheckpointManifest(_Frozen):
    """What a checkpoint is, what it came from, and the digest of every file it holds."""

    format_version: Literal[1] = Field(
        default=FORMAT_VERSION, description="Version of this manifest format."
    )
    name: str = Field(
        pattern=NAME_PATTERN, description="Registry entry this checkpoint belongs to."
    )
    kind: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,63}$",
        description=f"Checkpoint format, e.g. {KIND_BOIGLLM_LORA!r} or {KIND_BOIGSD_LORA!r}.",
    )
    version: str = Field(
        pattern=VERSION_PATTERN,
        description="UTC publish time and 8 random hex digits, e.g. 20261126T073000Z-1a2b3c4d; "
        "sorts chronologically.",
    )
    created_at: Annotated[datetime, AfterValidator(_utc)] = Field(description="Publish time (UTC).")
    base_model: BaseModelRef = Field(description="The model these weights adapt.")
    data: DatasetRef = Field(description="The dataset the checkpoint was trained on.")
    hyperparameters: dict[ParameterName, JsonScalar] = Field(
        default_factory=dict, description="Training settings, by name (JSON scalars only)."
    )
    metrics: dict[ParameterName, FiniteFloat] = Field(
        default_factory=dict, description="Evaluation results, by metric name."
    )
    files: dict[RelativeFilePath, FileDigest] = Field(
        min_length=1,
        description="Every file of the checkpoint except manifest.json, by POSIX path "
        "relative to the version folder.",
    )

    @field_validator("files")
    @classmethod
    def _allowed_suffixes(cls, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
        for relative in files:
            problem = _suffix_problem(relative)
            if problem is not None:
                raise ValueError(problem)
        return files


# --- references and paths ---------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointRef:
    """One published version of one registry entry."""

    name: str
    version: str
    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE


def served_model_name(checkpoint: CheckpointRef) -> str:
    """The name a model server (vLLM) serves a checkpoint under, as merged weights or as a
    LoRA adapter: registry entry and version, e.g. ``boigllm-20261206-114500-ab12``. The
    trainer's export and the describer agree on it through this function."""
    return f"{checkpoint.name}-{checkpoint.version}"


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CheckpointRejected(f"checkpoint name {name!r} must match {NAME_PATTERN}")
    return name


def _suffix_problem(relative: str) -> str | None:
    suffix = PurePosixPath(relative).suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        return (
            f"{relative}: {suffix} files may hold pickles, which run code when loaded; "
            "save weights as .safetensors (no pickle/torch.load of untrusted files)"
        )
    if suffix not in ALLOWED_SUFFIXES:
        return (
            f"{relative}: file type {suffix or '(none)'} is not allowed in a checkpoint; "
            f"allowed: {', '.join(sorted(ALLOWED_SUFFIXES))}"
        )
    return None


def _check_suffix(relative: str) -> None:
    problem = _suffix_problem(relative)
    if problem is not None:
        raise CheckpointRejected(problem)


def _entry_dir(registry_dir: Path, name: str) -> Path:
    return registry_dir / _check_name(name)


def _ref(registry_dir: Path, name: str, version: str) -> CheckpointRef:
    return CheckpointRef(name, version, _entry_dir(registry_dir, name) / VERSIONS_DIR / version)


def new_version(now: datetime | None = None) -> str:
    """A fresh version id: UTC time to the second plus 8 random hex digits."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


# --- publishing -------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _source_files(source_dir: Path) -> list[tuple[str, Path]]:
    if not source_dir.is_dir():
        raise CheckpointRejected(f"training output {source_dir} is not a directory")
    files: list[tuple[str, Path]] = []
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir).as_posix()
        if path.is_symlink():
            # A link could point at anything on the trainer host; copy real files only.
            raise CheckpointRejected(f"{relative}: symbolic links are not allowed in a checkpoint")
        if path.is_dir():
            continue
        if relative == MANIFEST_FILE:
            raise CheckpointRejected(f"{MANIFEST_FILE} is reserved for the registry's manifest")
        _check_suffix(relative)
        files.append((relative, path))
    if not files:
        raise CheckpointRejected(f"training output {source_dir} holds no files")
    return files


def _copy_hashing(source: Path, target: Path) -> FileDigest:
    # Hash the bytes as they are written, so the digest describes the copy, not a source
    # that might change between copy and hash.
    digest = hashlib.sha256()
    size = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as reader, target.open("xb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return FileDigest(sha256=digest.hexdigest(), size=size)


def _write_pointer(entry_dir: Path, version: str) -> None:
    # A unique temp name (not a fixed current.tmp) so two publishers never share one file;
    # os.replace is atomic, so a reader of `current` sees the old or the new version.
    fd, tmp = tempfile.mkstemp(dir=entry_dir, prefix=".current-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, entry_dir / POINTER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(entry_dir)


def publish_checkpoint(
    registry_dir: Path,
    name: str,
    source_dir: Path,
    *,
    kind: str,
    base_model: BaseModelRef,
    data: DatasetRef,
    hyperparameters: Mapping[str, JsonScalar] | None = None,
    metrics: Mapping[str, float] | None = None,
    version: str | None = None,
    make_current: bool = True,
) -> CheckpointRef:
    """Copy a finished training output into the registry as a new version.

    The version folder is assembled under a temp name and renamed into place complete, with a
    manifest holding the sha256 of every file; then (unless ``make_current`` is false, e.g.
    to hold a candidate back for evaluation) the ``current`` pointer moves to it.
    """
    entry_dir = _entry_dir(registry_dir, name)
    files = _source_files(source_dir)
    created_at = datetime.now(UTC)
    version = version or new_version(created_at)
    if not _VERSION.match(version):
        raise CheckpointRejected(f"checkpoint version {version!r} must match {VERSION_PATTERN}")
    versions_dir = entry_dir / VERSIONS_DIR
    versions_dir.mkdir(parents=True, exist_ok=True)
    final_dir = versions_dir / version
    if final_dir.exists():
        raise CheckpointRejected(f"checkpoint {name} version {version} already exists")

    staging = Path(tempfile.mkdtemp(dir=versions_dir, prefix=".tmp-"))
    try:
        digests = {relative: _copy_hashing(path, staging / relative) for relative, path in files}
        try:
            manifest = CheckpointManifest(
                name=name,
                kind=kind,
                version=version,
                created_at=created_at,
                base_model=base_model,
                data=data,
                hyperparameters=dict(hyperparameters or {}),
                metrics=dict(metrics or {}),
                files=digests,
            )
        except ValidationError as exc:
            raise CheckpointRejected(f"invalid checkpoint manifest: {exc}") from exc
        with (staging / MANIFEST_FILE).open("x", encoding="utf-8") as handle:
            handle.write(manifest.model_dump_json(indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for directory in sorted({p.parent for p in staging.rglob("*")}, reverse=True):
            _fsync_dir(directory)
        # rename() of a directory onto an existing non-empty one fails: no silent overwrite.
        os.rename(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(versions_dir)
    if make_current:
        _write_pointer(entry_dir, version)
    return CheckpointRef(name, version, final_dir)


# --- reading ----------------------------------------------------------------------------


def _read_pointer(entry_dir: Path) -> str | None:
    try:
        text = (entry_dir / POINTER_FILE).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint pointer {entry_dir / POINTER_FILE} unreadable") from exc
    version = text.strip()
    if not _VERSION.match(version):
        raise CheckpointError(f"checkpoint pointer {entry_dir / POINTER_FILE} is malformed")
    return version


def current_checkpoint(registry_dir: Path, name: str) -> CheckpointRef | None:
    """The version the pointer names, or None when nothing was published yet."""
    version = _read_pointer(_entry_dir(registry_dir, name))
    if version is None:
        return None
    ref = _ref(registry_dir, name, version)
    if not ref.path.is_dir():
        raise CheckpointError(f"checkpoint {name} points at missing version {version}")
    return ref


def list_versions(registry_dir: Path, name: str) -> list[CheckpointRef]:
    """Every published version of ``name``, oldest first (staging folders excluded)."""
    versions_dir = _entry_dir(registry_dir, name) / VERSIONS_DIR
    if not versions_dir.is_dir():
        return []
    return [
        _ref(registry_dir, name, path.name)
        for path in sorted(versions_dir.iterdir())
        if path.is_dir() and _VERSION.match(path.name)
    ]


def _verify_files(ref: CheckpointRef, manifest: CheckpointManifest) -> None:
    present: set[str] = set()
    for path in ref.path.rglob("*"):
        relative = path.relative_to(ref.path).as_posix()
        if path.is_symlink():
            raise CheckpointError(f"checkpoint {ref.name}/{ref.version}: {relative} is a link")
        if path.is_file() and relative != MANIFEST_FILE:
            present.add(relative)
    unlisted = sorted(present - manifest.files.keys())
    if unlisted:
        raise CheckpointError(
            f"checkpoint {ref.name}/{ref.version} holds files its manifest does not list: "
            + ", ".join(unlisted)
        )
    missing = sorted(manifest.files.keys() - present)
    if missing:
        raise CheckpointError(
            f"checkpoint {ref.name}/{ref.version} is missing files: " + ", ".join(missing)
        )
    for relative, expected in sorted(manifest.files.items()):
        path = ref.path / relative
        if path.stat().st_size != expected.size or file_sha256(path) != expected.sha256:
            raise CheckpointError(
                f"checkpoint {ref.name}/{ref.version}: {relative} does not match its sha256 "
                "in the manifest (corrupted or tampered)"
            )


def load_manifest(
    ref: CheckpointRef, *, verify: bool = True, kind: str | None = None
) -> CheckpointManifest:
    """Read a version's manifest; with ``kind``, refuse a checkpoint of another kind; with
    ``verify``, check every file against the manifest.

    Verification reads every byte, so call it once per load, not per request.
    """
    try:
        manifest = CheckpointManifest.model_validate_json(ref.manifest_path.read_bytes())
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {ref.name}/{ref.version} has no manifest") from exc
    except ValidationError as exc:
        raise CheckpointError(
            f"checkpoint {ref.name}/{ref.version} has an invalid manifest: {exc}"
        ) from exc
    if (manifest.name, manifest.version) != (ref.name, ref.version):
        raise CheckpointError(
            f"checkpoint folder {ref.name}/{ref.version} holds the manifest of "
            f"{manifest.name}/{manifest.version}"
        )
    # Before verification: a wrong kind is refused without reading gigabytes first.
    if kind is not None and manifest.kind != kind:
        raise CheckpointError(
            f"checkpoint {ref.name}/{ref.version} is a {manifest.kind!r}, not a {kind!r}"
        )
    if verify:
        _verify_files(ref, manifest)
    return manifest


def rollback(registry_dir: Path, name: str, version: str) -> CheckpointRef:
    """Move the pointer back (or forward) to an existing version, after verifying it."""
    if not _VERSION.match(version):
        raise CheckpointRejected(f"checkpoint version {version!r} must match {VERSION_PATTERN}")
    ref = _ref(registry_dir, name, version)
    if not ref.path.is_dir():
        raise NotFound(f"checkpoint {name} has no version {version}")
    load_manifest(ref, verify=True)
    _write_pointer(ref.path.parent.parent, version)
    return ref


def prune_versions(registry_dir: Path, name: str, *, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest versions of ``name``, never the one the pointer
    names (a rollback may have moved it back); returns the versions deleted, oldest first.

    A service that loaded a deleted version keeps serving it from memory; on its next reload
    it follows the pointer, which always names a kept version.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    current = _read_pointer(_entry_dir(registry_dir, name))
    # Newest by the manifest's time: version names sort by the second they were made in only.
    versions = sorted(
        list_versions(registry_dir, name),
        key=lambda ref: (load_manifest(ref, verify=False).created_at, ref.version),
    )
    doomed = [ref for ref in versions[:-keep] if ref.version != current]
    for ref in doomed:
        # Renamed out of the versions folder first, so a half-deleted version is never listed.
        trash = ref.path.parent / f".trash-{ref.version}"
        os.rename(ref.path, trash)
        shutil.rmtree(trash)
    return [ref.version for ref in doomed]


class CheckpointWatcher:
    """Notices pointer moves so a server can hot-reload without a restart.

    ``poll()`` reads the few bytes of the pointer file and no more; it is cheap enough to call
    once per request.
    """

    def __init__(self, registry_dir: Path, name: str) -> None:
        self._entry_dir = _entry_dir(registry_dir, name)
        self._registry_dir = registry_dir
        self._name = name
        self._seen: str | None = None

    @property
    def seen(self) -> str | None:
        """The version the last successful ``poll()`` reported."""
        return self._seen

    def poll(self) -> CheckpointRef | None:
        """The new current checkpoint if the pointer moved since the last poll, else None.

        The first poll reports whatever is current. A pointer that disappears reports nothing.
        """
        version = _read_pointer(self._entry_dir)
        if version is None or version == self._seen:
            return None
        self._seen = version
        return _ref(self._registry_dir, self._name, version)
