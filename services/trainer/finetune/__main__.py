"""`python -m services.trainer.finetune DATASET_DIR --out DIR --preset cpu|cpu-weights|gpu|tiny`:
train BoigLLM."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from services.common.settings import boig_home
from services.trainer.finetune.config import PRESETS
from services.trainer.finetune.publish import publish_trained
from services.trainer.finetune.train import StepReport, finetune

app = typer.Typer(add_completion=False)


class Preset(StrEnum):
    CPU = "cpu"
    CPU_WEIGHTS = "cpu-weights"
    GPU = "gpu"
    TINY = "tiny"


@app.command()
def main(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset root (with latest) or a version.")],
    out: Annotated[Path, typer.Option(help="Output folder; re-running resumes from it.")],
    preset: Annotated[Preset, typer.Option(help="Hyper-parameter preset.")] = Preset.CPU,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Override the preset's number of steps.")
    ] = None,
    base_model: Annotated[
        Path | None,
        typer.Option(help="Local HF model folder; default: the SmolLM2 `make models` prepares."),
    ] = None,
    publish: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint registry folder: publish the finished adapter there as 'boigllm' "
            "and move its current pointer (the describer reloads it)."
        ),
    ] = None,
) -> None:
    """Fine-tune a LoRA adapter on both directions; prints the final loss and output folder."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # The folder the describer loads by default (its model_prep; services never import it).
    base_model = base_model or boig_home() / "models" / "smollm2-135m-instruct"
    config = PRESETS[preset.value](base_model)
    if max_steps is not None:
        overrides: dict[str, int] = {"max_steps": max_steps}
        if config.warmup_steps >= max_steps:
            overrides["warmup_steps"] = max_steps - 1
        config = config.model_validate({**config.model_dump(), **overrides})
    with tqdm(total=config.max_steps, unit="step") as bar:

        def report(update: StepReport) -> None:
            bar.n = update.step
            bar.set_postfix(loss=f"{update.loss:.4f}", lr=f"{update.learning_rate:.1e}")
            bar.refresh()

        result = finetune(dataset_dir, out, config, progress=report)
    typer.echo(
        f"done: {result.steps} steps (resumed from {result.resumed_from_step}), "
        f"final loss {result.final_loss:.4f}, eval loss {result.eval_loss}, "
        f"{result.seconds:.1f} s -> {result.out_dir}"
    )
    if publish is not None:
        ref = publish_trained(result.out_dir, publish, dataset_dir=dataset_dir, config=config)
        typer.echo(f"published {ref.name} version {ref.version} -> {ref.path}")


if __name__ == "__main__":
    app()
