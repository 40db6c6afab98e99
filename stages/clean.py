"""Clean the turns table: HTML, control characters and stray symbols, NFKC width, optional
traditional->simplified, synonym normalisation, PII masking, length bounds and duplicate removal;
rows changed and conversations dropped per rule go to the metrics file.

Run by DVC: `dvc repro clean`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    turns_path: Annotated[Path, typer.Argument(help="Input turns parquet (from ingest).")],
    clean_path: Annotated[Path, typer.Argument(help="Output cleaned turns parquet.")],
    metrics_path: Annotated[Path, typer.Argument(help="Output metrics JSON (flat counts per rule).")],
    timings: stage.Timings = None,
) -> None:
    with stage.bad_input("clean"):
        params = load_section("clean")

    import polars as pl

    from chatforge.data.clean import LexiconError, clean_turns, load_synonyms
    from chatforge.io import write_parquet

    log = stage.start("clean")
    with stage.bad_input("clean", LexiconError, hint="clean.synonyms_path in params.yaml"):
        synonyms = load_synonyms(params.synonyms_path) if params.synonyms_path else {}
    turns = pl.read_parquet(turns_path)

    cleaned, counts = clean_turns(turns, params=params, synonyms=synonyms)

    write_parquet(cleaned, clean_path)
    stage.write_metrics(counts, metrics_path, timings=timings)
    log.info("%d -> %d turns, %d -> %d conversations -> %s", counts["rows_in"], counts["rows_out"],
             counts["conversations_in"], counts["conversations_out"], clean_path)


if __name__ == "__main__":
    typer.run(main)
