"""The `chaser` command. Heavy imports live inside commands so `--help` is instant."""

from __future__ import annotations

import typer

from chaser.cli.commands import guest

app = typer.Typer(help="Chaser: sandbox sessions in microVMs.", no_args_is_help=True, add_completion=False)
app.add_typer(guest.app, name="guest")


if __name__ == "__main__":
    app()
