"""The registry side of retraining: moving an entry's pointer with a recorded decision, the
entry's versions as the ledger shows them to the gateway, and one retrain per entry at a time.

A move is verified, then recorded, then made: the pointer never moves without a record, and
a version whose files do not match its manifest is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from services.common.checkpoints import (
    CheckpointError,
    CheckpointRef,
    current_checkpoint,
    list_versions,
    load_manifest,
    rollback,
)
from services.common.contracts import CheckpointInfo, CheckpointList
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.retraining import NewDecision, RetrainLedger, StoredDecision

logger = logging.getLogger(__name__)

LOCK_FILE = ".retrain.lock"


def checkpoint_infos(registry: Path, name: str) -> list[CheckpointInfo]:
    """Every published version of ``name`` from its manifest (files not re-hashed), newest
    first, the current one marked."""
    current = current_checkpoint(registry, name)
    infos = []
    for ref in list_versions(registry, name):
        try:
            manifest = load_manifest(ref, verify=False)
        except CheckpointError as exc:
            logger.warning("left out of the checkpoint list: %s", exc)
            continue
        infos.append(
            CheckpointInfo(
                name=name,
                version=ref.version,
                kind=manifest.kind,
                created_at=manifest.created_at,
                current=current is not None and ref.version == current.version,
                base_model=f"{manifest.base_model.name}@{manifest.base_model.version}",
                dataset_version=manifest.data.version,
                dataset_sha256=manifest.data.manifest_sha256,
                metrics=dict(manifest.metrics),
            )
        )
    return sorted(infos, key=lambda info: (info.created_at, info.version), reverse=True)


def record_registry(ledger: RetrainLedger, registry: Path, name: str) -> CheckpointList:
    """Record the registry's state of ``name`` for the gateway; the recorded list."""
    ledger.record_versions(name, checkpoint_infos(registry, name))
    return ledger.versions(name)


@contextlib.contextmanager
def retrain_lock(registry: Path, name: str) -> Iterator[None]:
    """Held while one retrain of ``name`` runs; a second one is a Conflict, not a wait (the
    first may train for an hour). An advisory lock: a process that dies releases it."""
    entry = registry / name
    entry.mkdir(parents=True, exist_ok=True)
    fd = os.open(entry / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Conflict(f"another retrain of {name} is running") from exc
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def find_version(registry: Path, name: str, version: str) -> CheckpointRef:
    for ref in list_versions(registry, name):
        if ref.version == version:
            return ref
    raise NotFound(f"checkpoint {name} has no version {version}")


def move_pointer(
    *,
    registry: Path,
    name: str,
    version: str,
    ledger: RetrainLedger,
    action: Literal["promote", "rollback"],
    reason: str,
    actor: str,
) -> StoredDecision:
    """An operator's move of ``name``'s pointer to ``version``, recorded: ``rollback`` to a
    version published before the current one, ``promote`` to any (e.g. a rejected
    candidate). The version's files are verified first; the registry's state is recorded."""
    target = find_version(registry, name, version)
    previous = current_checkpoint(registry, name)
    if previous is not None and previous.version == version:
        raise Conflict(f"{name} {version} is the current checkpoint already")
    manifest = load_manifest(target, verify=True)
    if action == "rollback" and previous is not None:
        served = load_manifest(previous, verify=False)
        if (manifest.created_at, version) > (served.created_at, previous.version):
            raise InvalidInput(
                f"{version} was published after the current {previous.version}: "
                "that is a promotion, not a rollback"
            )
    decision = ledger.record(
        NewDecision(
            checkpoint=name,
            action=action,
            trigger="operator",
            reason=reason,
            previous_version=previous.version if previous is not None else None,
            current_version=version,
            candidate_version=version,
            dataset_version=manifest.data.version,
            dataset_sha256=manifest.data.manifest_sha256,
            details={"actor": actor},
        )
    )
    rollback(registry, name, version)
    logger.info(
        "%s %s: %s -> %s (%s)",
        action,
        name,
        previous.version if previous else None,
        version,
        reason,
    )
    record_registry(ledger, registry, name)
    return decision
