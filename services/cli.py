"""`boig`: the operator's command line (models, contracts, API keys)."""

from __future__ import annotations

from pathlib import Path

import typer

from services.gateway.cli import app as gateway_app

app = typer.Typer(help="BOIG operator commands.", no_args_is_help=True)
models_app = typer.Typer(help="Local default models.", no_args_is_help=True)
contracts_app = typer.Typer(help="Wire contracts in proto/.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(contracts_app, name="contracts")
app.add_typer(gateway_app, name="gateway", help="Gateway administration: database, API keys.")

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "proto"
ENV_EXAMPLE = REPO / ".env.example"


@models_app.command("prepare")
def prepare_models() -> None:
    """Prepare the embedded default models (cached; safe to run again)."""
    from services.tooling.models import prepare_all

    prepare_all()


@contracts_app.command("write")
def write_contracts(root: Path = PROTO) -> None:
    """Regenerate proto/ and .env.example from the code."""
    from services.tooling import env_example
    from services.tooling.contracts import write

    changed = write(root)
    if env_example.write(ENV_EXAMPLE):
        changed.append(ENV_EXAMPLE.name)
    typer.echo("\n".join(f"wrote {path}" for path in changed) or "proto/ already up to date")


@contracts_app.command("check")
def check_contracts(root: Path = PROTO) -> None:
    """Exit 1 when proto/ or .env.example differs from what the code generates."""
    from services.tooling import env_example
    from services.tooling.contracts import check

    problems = check(root)
    env_problem = env_example.check(ENV_EXAMPLE)
    if env_problem:
        problems.append(env_problem)
    if problems:
        typer.echo("\n\n".join(problems), err=True)
        typer.echo("out of date: run `make contracts` and commit the result", err=True)
        raise typer.Exit(1)
    typer.echo("proto/ matches the code")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
