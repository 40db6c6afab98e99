"""Split the cleaned turns into train/val/test by a stable hash of the conversation id.

Stratified by intent in expectation, val/test hold original rows only, and adding data never moves
an existing conversation (see chatforge.data.split). Run it with `dvc repro split`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    clean: Annotated[Path, typer.Argument(help="Cleaned turns parquet (the clean stage's output).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write train/val/test.parquet into.")],
    metrics: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    timings: stage.Timings = None,
) -> None:
    with stage.bad_input("split"):
        params = load_section("split")

    import polars as pl

    from chatforge.data.split import SplitError, intents_missing, split_turns
    from chatforge.io import atomic_path, write_parquet

    log = stage.start("split")
    turns = pl.read_parquet(stage.require(clean, "clean"))
    with stage.bad_input("split", SplitError):
        result = split_turns(turns, val_fraction=params.val_fraction, test_fraction=params.test_fraction,
                             salt=params.salt, train_only_sources=tuple(params.train_only_sources))
    for split in ("val", "test"):
        if missing := intents_missing(result.metrics, split):
            log.warning("intents with no %s conversation (evaluate cannot score them): %s", split, ", ".join(missing))
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, frame in result.splits.items():
            write_parquet(frame, tmp / f"{name}.parquet")
    stage.write_metrics(result.metrics, metrics, timings=timings)
    log.info("conversations per split: %s", result.metrics["conversations"])


if __name__ == "__main__":
    typer.run(main)
