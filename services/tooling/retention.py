"""`boig prune`: old checkpoint and dataset versions under a BOIG home, never those in use.

Generation jobs and their images are deleted by the generator worker itself, after
BOIG_GENERATOR_JOB_RETENTION_DAYS (see services/generator/retention.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.common.checkpoints import prune_versions
from services.common.settings import checkpoint_registry
from services.trainer.ingest.dataset import LATEST, prune_dataset_versions

DATASETS_DIR = "datasets"


@dataclass
class PruneReport:
    checkpoints: dict[str, list[str]] = field(default_factory=dict)
    """Registry entry -> versions deleted."""
    datasets: dict[str, list[str]] = field(default_factory=dict)
    """Dataset folder -> versions deleted."""


def prune_home(home: Path, *, checkpoints_keep: int, datasets_keep: int) -> PruneReport:
    """Keep the newest ``checkpoints_keep`` versions of every registry entry (and the one its
    pointer names) and the newest ``datasets_keep`` versions of every dataset (and ``latest``)."""
    report = PruneReport()
    registry = checkpoint_registry(home)
    if registry.is_dir():
        for entry in sorted(p for p in registry.iterdir() if p.is_dir()):
            deleted = prune_versions(registry, entry.name, keep=checkpoints_keep)
            if deleted:
                report.checkpoints[entry.name] = deleted
    datasets = home / DATASETS_DIR
    if datasets.is_dir():
        for folder in sorted(p for p in datasets.iterdir() if (p / LATEST).is_file()):
            deleted = prune_dataset_versions(folder, keep=datasets_keep)
            if deleted:
                report.datasets[folder.name] = deleted
    return report
