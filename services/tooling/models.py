"""Prepare the embedded default models once: SmolLM2 as an HF folder, the shapes YOLO, the
tiny random Stable Diffusion pipeline (tests, the evaluation's floor), BoigLLM fine-tuned on
the synthetic world (~20 min on 2 cores) and the world SD the generator serves (trained on the
synthetic world: ~1 h on 2 cores); each the first time only.

All are cached under ``boig_home()/models``; a second run finds them and returns at once.
A model the operator names in settings (BOIG_DESCRIBER_MODEL_PATH,
BOIG_FEATURIZER_DETECTOR_WEIGHTS, BOIG_GENERATOR_MODEL_PATH) is theirs: it is checked for,
never built or overwritten.
"""

from __future__ import annotations

import time
from pathlib import Path

from services.common.settings import boig_home


class ModelMissing(RuntimeError):
    pass


def models_dir() -> Path:
    return boig_home() / "models"


def prepare_all(
    *, world_sd: bool = True, boigllm: bool = True, log: bool = True
) -> dict[str, Path]:
    """Prepare (or find) every model the configured services need; returns where each lives.

    ``world_sd=False`` skips training the world SD (the test suites run on the tiny pipeline);
    ``boigllm=False`` skips fine-tuning BoigLLM on the synthetic world (the suites use the
    base model or tiny ones).
    """
    # Imported here: each pulls in torch and its model library.
    from services.common.settings import (
        default_smollm2_dir,
        default_tiny_pipeline_dir,
        default_world_sd_dir,
    )
    from services.describer.model_prep import prepare_smollm2
    from services.describer.settings import DescriberSettings
    from services.featurizer.settings import FeaturizerSettings, default_detector_weights
    from services.generator.settings import GeneratorSettings
    from services.generator.tiny_pipeline import prepare_tiny_pipeline
    from services.tooling.world_sd_recipe import prepare_world_sd
    from services.trainer.detector.prepare import prepare_detector

    prepared: dict[str, Path] = {}
    started = time.perf_counter()
    llm = DescriberSettings().model_path
    if llm == default_smollm2_dir():
        prepared["llm"] = prepare_smollm2(llm)
    elif (llm / "config.json").is_file():
        prepared["llm"] = llm
    else:
        raise ModelMissing(f"BOIG_DESCRIBER_MODEL_PATH={llm} holds no HF model (no config.json)")
    _report(log, "llm", prepared["llm"], started)

    started = time.perf_counter()
    featurizer = FeaturizerSettings()
    if featurizer.detector_backend == "yolo":
        weights = featurizer.detector_weights
        if weights == default_detector_weights():
            prepared["detector"] = prepare_detector(weights.parent)
        elif weights.is_file():
            prepared["detector"] = weights
        else:
            raise ModelMissing(f"BOIG_FEATURIZER_DETECTOR_WEIGHTS={weights} does not exist")
        _report(log, "detector", prepared["detector"], started)

    started = time.perf_counter()
    prepared["tiny-diffusion"] = prepare_tiny_pipeline(default_tiny_pipeline_dir())
    _report(log, "tiny-diffusion", prepared["tiny-diffusion"], started)

    if boigllm and prepared.get("llm") == default_smollm2_dir():
        from services.tooling.llm_recipe import prepare_boigllm

        started = time.perf_counter()
        prepared["boigllm"] = prepare_boigllm()
        _report(log, "boigllm", prepared["boigllm"], started)

    started = time.perf_counter()
    diffusion = GeneratorSettings().model_path
    if diffusion == default_world_sd_dir():
        if not world_sd:
            return prepared
        prepared["diffusion"] = prepare_world_sd(diffusion)
    elif diffusion == default_tiny_pipeline_dir() or (diffusion / "model_index.json").is_file():
        prepared["diffusion"] = diffusion
    else:
        raise ModelMissing(
            f"BOIG_GENERATOR_MODEL_PATH={diffusion} holds no diffusers pipeline "
            "(no model_index.json)"
        )
    _report(log, "diffusion", prepared["diffusion"], started)
    return prepared


def _report(log: bool, name: str, path: Path, started: float) -> None:
    if log:
        print(f"{name} ready: {path} ({time.perf_counter() - started:.1f} s)")
