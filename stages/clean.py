"""Clean the turns table: HTML, control characters and stray symbols, NFKC width, optional
traditional->simplified, synonym normalisation, PII masking, length bounds and duplicate removal;
rows changed and conversations dropped per rule go to the metrics file.

Run by DVC: `dvc repro clean`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from chatforge.io import EXIT_BAD_INPUT


def main(
    turns_path: Annotated[Path, typer.Argument(help="Input turns parquet (from ingest).")],
    clean_path: Annotated[Path, typer.Argument(help="Output cleaned turns parquet.")],
    metrics_path: Annotated[Path, typer.Argument(help="Output metrics JSON (flat counts per rule).")],
) -> None:
    from chatforge.params import CleanParams, ParamsError, load_section

    try:
        params = load_section("clean")
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    assert isinstance(params, CleanParams)

    import polars as pl

    from chatforge.data.clean import LexiconError, clean_turns, load_synonyms
    from chatforge.io import setup_logging, write_json, write_parquet

    log = setup_logging("clean")
    try:
        synonyms = load_synonyms(params.synonyms_path) if params.synonyms_path else {}
    except LexiconError as exc:
        typer.echo(f"clean: {exc} (clean.synonyms_path in params.yaml)", err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    turns = pl.read_parquet(turns_path)

    cleaned, counts = clean_turns(turns, params=params, synonyms=synonyms)

    write_parquet(cleaned, clean_path)
    write_json(counts, metrics_path)
    log.info(
        "%d -> %d turns, %d -> %d conversations -> %s",
        counts["rows_in"],
        counts["rows_out"],
        counts["conversations_in"],
        counts["conversations_out"],
        clean_path,
    )


if __name__ == "__main__":
    typer.run(main)
