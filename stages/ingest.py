"""Read every source in `ingest.sources` into the canonical turns table; unreadable rows go to a
rejects file with their reason, counts per source and per reason to the metrics file.

Run by DVC: `dvc repro ingest`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    turns_path: Annotated[Path, typer.Argument(help="Output turns parquet.")],
    rejects_path: Annotated[Path, typer.Argument(help="Output rejects JSONL (source, location, reason, raw).")],
    metrics_path: Annotated[Path, typer.Argument(help="Output metrics JSON.")],
    timings: stage.Timings = None,
) -> None:
    with stage.bad_input("ingest"):
        params = load_section("ingest")

    from chatforge.data.ingest import IngestError, ingest
    from chatforge.io import write_jsonl, write_parquet

    log = stage.start("ingest")
    with stage.bad_input("ingest", IngestError):
        result = ingest(params)

    write_parquet(result.turns, turns_path)
    write_jsonl(result.rejects.iter_rows(named=True), rejects_path)
    metrics = result.metrics()
    stage.write_metrics(metrics, metrics_path, timings=timings)
    log.info("%d conversations, %d turns, %d rejects -> %s", metrics["conversations"], metrics["turns"],
             metrics["rejects"], turns_path)


if __name__ == "__main__":
    typer.run(main)
