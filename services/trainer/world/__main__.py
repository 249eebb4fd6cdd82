"""CLI: ``python -m services.trainer.world --out DIR --seed 0 --posts-per-brand 200``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from services.trainer.world.brands import DEFAULT_BRANDS
from services.trainer.world.generate import KPI_NAMES, Variant, generate_world

cli = typer.Typer(add_completion=False, help="Generate the synthetic brand world (design §7).")


@cli.command()
def main(
    out: Annotated[Path, typer.Option(help="Output folder: posts.jsonl, media/, world.json.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    posts_per_brand: Annotated[int, typer.Option(min=1, help="Posts per brand.")] = 200,
    start_year: Annotated[int, typer.Option(help="First year of the span (UTC).")] = 2018,
    years: Annotated[int, typer.Option(min=1, help="Length of the span in years.")] = 5,
    variant: Annotated[
        str, typer.Option(help="social (post text, likes) or stock (title, downloads).")
    ] = "social",
    image_size: Annotated[int, typer.Option(min=32, help="Creative side in pixels.")] = 256,
    truth_dir: Annotated[
        Path | None,
        typer.Option(
            help="Also write truth.jsonl (hidden attributes, expected KPI) here; "
            "for evaluation only, keep it out of training data."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a world already in --out.")] = False,
) -> None:
    """Write a seeded world of fictional brands' posts, creatives and KPIs."""
    if variant not in KPI_NAMES:
        raise typer.BadParameter(f"must be one of {', '.join(KPI_NAMES)}", param_hint="--variant")
    chosen: Variant = "stock" if variant == "stock" else "social"
    started = time.perf_counter()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("posts", total=posts_per_brand * len(DEFAULT_BRANDS))
        manifest = generate_world(
            out,
            seed=seed,
            posts_per_brand=posts_per_brand,
            start_year=start_year,
            years=years,
            variant=chosen,
            image_size=image_size,
            truth_dir=truth_dir,
            overwrite=overwrite,
            progress=lambda done: bar.advance(task, done),
        )
    typer.echo(
        f"wrote {manifest.posts} posts of {len(manifest.brands)} brands to {out} "
        f"in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    cli()
