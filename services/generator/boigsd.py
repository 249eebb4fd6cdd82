"""Which BoigSD LoRA a task runs with: the registry's current one, checked, loaded once.

A task asks at its start; if the pointer moved since the last task, the new LoRA is loaded
then. The solo worker runs one task at a time, so a task in flight always finishes on the
version it started with, and the job records that version. boig_checkpoint_info{model="boigsd"}
names the version boigsd tasks run with (kept while other strategies run on the base weights).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common import metrics
from services.common.checkpoints import (
    KIND_BOIGSD_LORA,
    current_checkpoint,
    load_manifest,
)
from services.common.contracts import ModelInfo
from services.generator import SERVICE
from services.generator.pipeline import ImagePipeline

logger = logging.getLogger(__name__)

MODEL_BOIGSD = "boigsd"
"""The ``model`` label of the BoigSD LoRA in the model metrics (as in a job's ``models``)."""


@dataclass(frozen=True)
class LoraChoice:
    model: ModelInfo | None
    notes: list[str] = field(default_factory=list)


class BoigsdLoras:
    """Keeps the pipeline's LoRA in step with the task's strategy and the registry."""

    def __init__(self, pipeline: ImagePipeline, registry: Path | None, name: str) -> None:
        self._pipeline = pipeline
        self._registry = registry
        self._name = name

    def choose(self, *, use_boigsd: bool) -> LoraChoice:
        """Load (or unload) the LoRA this task needs; say so when BoigSD falls back."""
        if not use_boigsd:
            self._unload()
            return LoraChoice(model=None)
        if self._registry is None:
            self._unload()
            return LoraChoice(
                model=None,
                notes=[
                    "boigsd: no checkpoint registry is configured "
                    "(BOIG_GENERATOR_CHECKPOINT_REGISTRY); generated with the base pipeline"
                ],
            )
        ref = current_checkpoint(self._registry, self._name)
        if ref is None:
            self._unload()
            metrics.CHECKPOINT_PUBLISHED.labels(SERVICE).set(0.0)
            metrics.record_model_unloaded(SERVICE, MODEL_BOIGSD)
            return LoraChoice(
                model=None,
                notes=[
                    f"boigsd: no {self._name!r} checkpoint is published yet; generated with "
                    "the base pipeline"
                ],
            )
        if self._pipeline.lora_version != ref.version:
            started = time.perf_counter()
            manifest = load_manifest(ref, verify=True, kind=KIND_BOIGSD_LORA)
            logger.info("loading BoigSD LoRA %s", ref.version)
            self._pipeline.load_lora(ref.path, ref.version)
            metrics.CHECKPOINT_PUBLISHED.labels(SERVICE).set(manifest.created_at.timestamp())
            metrics.record_model_load(
                SERVICE,
                MODEL_BOIGSD,
                name=self._name,
                version=ref.version,
                seconds=time.perf_counter() - started,
            )
        return LoraChoice(model=ModelInfo(name=self._name, version=ref.version))

    def _unload(self) -> None:
        if self._pipeline.lora_version is not None:
            self._pipeline.unload_lora()
