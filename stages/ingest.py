"""Read every source in `ingest.sources` into the canonical turns table; unreadable rows go to a
rejects file with their reason, counts per source and per reason to the metrics file.

Run by DVC: `dvc repro ingest`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from chatforge.io import EXIT_BAD_INPUT


def main(
    turns_path: Annotated[Path, typer.Argument(help="Output turns parquet.")],
    rejects_path: Annotated[
        Path, typer.Argument(help="Output rejects JSONL (source, location, reason, raw).")
    ],
    metrics_path: Annotated[Path, typer.Argument(help="Output metrics JSON.")],
) -> None:
    from chatforge.params import IngestParams, ParamsError, load_section

    try:
        params = load_section("ingest")
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    assert isinstance(params, IngestParams)

    from chatforge.data.ingest import IngestError, ingest
    from chatforge.io import setup_logging, write_json, write_jsonl, write_parquet

    log = setup_logging("ingest")
    try:
        result = ingest(params)
    except IngestError as exc:
        typer.echo(f"ingest: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None

    write_parquet(result.turns, turns_path)
    write_jsonl(result.rejects.iter_rows(named=True), rejects_path)
    metrics = result.metrics()
    write_json(metrics, metrics_path)
    log.info(
        "%d conversations, %d turns, %d rejects -> %s",
        metrics["conversations"],
        metrics["turns"],
        metrics["rejects"],
        turns_path,
    )


if __name__ == "__main__":
    typer.run(main)
