"""`spmbench`: the evaluation suite's command line."""

from __future__ import annotations

import typer


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark concept erasers.")
toy = typer.Typer(no_args_is_help=True, help="The embedded toy world.")
app.add_typer(toy, name="toy")


@toy.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def toy_train(ctx: typer.Context) -> None:
    """Retrain the toy world from nothing, resumably (`spmbench toy train --help` for settings)."""
    from spmbench.toy.cli import main as toy_main

    toy_main(list(ctx.args))


@toy.command(
    "card",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def toy_card(ctx: typer.Context) -> None:
    """Measure the toy world with its judge and write reports/toyworld.md (`--help` for settings)."""
    from spmbench.toy.cli import card_main

    card_main(list(ctx.args))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("ls")
def ls(kind: str = typer.Argument(..., help="models (apps and erasers come with the runner)")) -> None:
    """List a registry."""
    from spmbench.specs import SpecError, load_models

    if kind != "models":
        _fail(f"unknown registry {kind!r}: available: models")
    try:
        registry = load_models()
    except SpecError as e:
        _fail(str(e))
    for m in registry:
        derived = f" (from {m.derived_from})" if m.derived_from else ""
        typer.echo(f"{m.name:22s} {m.world:5s} {m.family:4s} {m.source}{derived}")


@app.command()
def validate() -> None:
    """Load every spec file and say what is wrong, if anything."""
    from spmbench.specs import SpecError, load_models

    try:
        models = load_models()
    except SpecError as e:
        _fail(str(e))
    typer.echo(f"ok: {len(models)} models")


def main() -> None:
    app()
