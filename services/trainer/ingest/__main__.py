"""`python -m services.trainer.ingest DATA_FILE --out DIR`: build a BoigLLM dataset version."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.common.errors import BoigError
from services.common.settings import default_history_path
from services.trainer.ingest.kpi import KpiBuckets
from services.trainer.ingest.pipeline import NoRowsKept, ingest_over_http
from services.trainer.ingest.rows import Variant
from services.trainer.ingest.split import SplitMode

app = typer.Typer(add_completion=False)
console = Console(stderr=True)
MAX_ERRORS_SHOWN = 20


@app.command()
def main(
    data_file: Annotated[Path, typer.Argument(help="Rows as .jsonl, .csv or .parquet.")],
    out: Annotated[Path, typer.Option(help="Dataset root; each run writes out/v<N>.")],
    featurizer_url: Annotated[
        str, typer.Option(help="Base URL of the featurizer service.")
    ] = "http://127.0.0.1:8101",
    split: Annotated[SplitMode, typer.Option(help="temporal (default) or random.")] = (
        SplitMode.TEMPORAL
    ),
    test_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Share of rows (per account) for test.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 0,
    variant: Annotated[
        Variant | None, typer.Option(help="posts or stock; detected from the columns if unset.")
    ] = None,
    min_posts: Annotated[
        int, typer.Option(min=1, help="Accounts with fewer posts are flagged.")
    ] = 20,
    batch_size: Annotated[int, typer.Option(min=1, max=64, help="Images per request.")] = 16,
    history: Annotated[
        Path | None,
        typer.Option(
            help="The describer's history store to refresh with these accounts "
            "(default: BOIG_HOME/history/history.json)."
        ),
    ] = None,
) -> None:
    """Validate rows, split, featurize every image (resumable) and write the dataset."""
    try:
        outcome = asyncio.run(
            ingest_over_http(
                data_file,
                out=out,
                featurizer_url=featurizer_url,
                split_mode=split,
                test_fraction=test_fraction,
                seed=seed,
                variant=variant,
                buckets=KpiBuckets(min_posts=min_posts),
                batch_size=batch_size,
                history_path=history or default_history_path(),
            )
        )
    except NoRowsKept as exc:
        console.print(exc.summary.table())
        for error in exc.summary.errors[:MAX_ERRORS_SHOWN]:
            console.print(f"  {error}", markup=False)
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    except (ValueError, BoigError) as exc:
        console.print(f"[red]ingestion failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(outcome.summary.table())
    console.print(f"dataset written to {outcome.version_dir}")


if __name__ == "__main__":
    app()
