"""Balance intent class sizes in the train split by seeded down- and up-sampling of conversations.

Writes the balanced train turns, metrics (before/after per intent, imbalance, goal_met) and the
bar-plot data (intent, stage, conversations). See chatforge.data.balance. Run `dvc repro balance`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    train: Annotated[Path, typer.Argument(help="Train split parquet (the split stage's output).")],
    out: Annotated[Path, typer.Argument(help="Balanced train turns parquet to write.")],
    metrics: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    plot: Annotated[Path, typer.Argument(help="Plot CSV to write: intent, stage, conversations.")],
    timings: stage.Timings = None,
) -> None:
    with stage.bad_input("balance"):
        params = load_section("balance")

    import polars as pl

    from chatforge.data.balance import BalanceError, balance_turns
    from chatforge.io import atomic_path, write_parquet

    log = stage.start("balance")
    turns = pl.read_parquet(stage.require(train, "split"))
    with stage.bad_input("balance", BalanceError):
        result = balance_turns(turns, **params.model_dump())
    if not result.metrics["goal_met"]:
        log.warning("imbalance goal not met: %s", result.metrics["reason"])
    elif result.metrics["reason"]:
        log.warning("%s", result.metrics["reason"])
    write_parquet(result.turns, out)
    with atomic_path(plot) as tmp:
        result.distribution.write_csv(tmp)
    stage.write_metrics(result.metrics, metrics, timings=timings)
    log.info("imbalance %.3f -> %.3f", result.metrics["imbalance_before"], result.metrics["imbalance_after"])


if __name__ == "__main__":
    typer.run(main)
