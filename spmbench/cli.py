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


def main() -> None:
    app()
