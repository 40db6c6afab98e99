"""Balance intent class sizes in the train split by seeded down- and up-sampling of conversations.

Writes the balanced train turns, metrics (before/after per intent, imbalance, goal_met) and the
bar-plot data (intent, stage, conversations). See chatforge.data.balance. Run `dvc repro balance`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge.io import EXIT_BAD_INPUT
from chatforge.params import BalanceParams, ParamsError, load_section


def main(
    train: Annotated[Path, typer.Argument(help="Train split parquet (the split stage's output).")],
    out: Annotated[Path, typer.Argument(help="Balanced train turns parquet to write.")],
    metrics: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    plot: Annotated[Path, typer.Argument(help="Plot CSV to write: intent, stage, conversations.")],
) -> None:
    try:
        params = load_section("balance")
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    assert isinstance(params, BalanceParams)

    import polars as pl

    from chatforge.data.balance import BalanceError, balance_turns
    from chatforge.io import atomic_path, setup_logging, write_json, write_parquet

    log = setup_logging("balance")
    if not train.exists():
        log.error("%s not found: run `dvc repro split` first.", train)
        raise typer.Exit(code=EXIT_BAD_INPUT)
    try:
        result = balance_turns(pl.read_parquet(train), **params.model_dump())
    except BalanceError as exc:
        log.error("%s", exc)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    if not result.metrics["goal_met"]:
        log.warning("imbalance goal not met: %s", result.metrics["reason"])
    elif result.metrics["reason"]:
        log.warning("%s", result.metrics["reason"])
    write_parquet(result.turns, out)
    with atomic_path(plot) as tmp:
        result.distribution.write_csv(tmp)
    write_json(result.metrics, metrics)
    log.info("imbalance %.3f -> %.3f", result.metrics["imbalance_before"], result.metrics["imbalance_after"])


if __name__ == "__main__":
    typer.run(main)
