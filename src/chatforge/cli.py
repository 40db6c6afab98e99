"""The `chatforge` command: params check, serve, chat, feedback export, A/B report, ...

Sub-commands import their heavy modules lazily so `chatforge --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="chatforge: build, evaluate and serve your own chatbot model.", no_args_is_help=True)
params_app = typer.Typer(help="Inspect and validate params.yaml.", no_args_is_help=True)
app.add_typer(params_app, name="params")


@params_app.command("check")
def params_check(
    path: Annotated[Path, typer.Argument(help="The params file to validate.")] = Path("params.yaml"),
) -> None:
    """Validate every section of PATH; print each bad key with its value and what is allowed."""
    from chatforge.params import ParamsError, load_all

    try:
        sections = load_all(path)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"{path}: ok ({len(sections)} sections: {', '.join(sections)})")


# ==== sub-commands registered by later issues go below (one small block each) ====


if __name__ == "__main__":
    app()
