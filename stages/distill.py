"""Distil the teacher into a smaller student (every k-th layer, KL at temperature + hard labels).

`dvc repro distill`. Writes the student folder and reports/distill.json: teacher and student
quality on val, their ratio (retention), parameters, size and latency. With distill.enforce true the
stage fails when retention < distill.min_retention (the number is recorded either way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge.io import EXIT_BAD_INPUT, EXIT_FAILED
from chatforge.io import setup_logging, write_json
from chatforge.params import ParamsError, load_section


def main(
    teacher_dir: Annotated[Path, typer.Argument(help="Teacher model folder (models/teacher).")],
    train_data: Annotated[Path, typer.Argument(help="Train turns parquet.")],
    val_data: Annotated[Path, typer.Argument(help="Val turns parquet.")],
    out_dir: Annotated[Path, typer.Argument(help="Student folder to publish (models/student).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/distill.json).")],
) -> None:
    import polars as pl

    from chatforge.modeling.distill import CompressError, distill
    from chatforge.runtime.folder import ModelFolderError, open_folder

    try:
        params = load_section("distill")
        open_folder(teacher_dir, key="distill (teacher folder)")
    except (ParamsError, ModelFolderError, CompressError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    log = setup_logging("distill")
    try:
        outcome = distill(teacher_dir, pl.read_parquet(train_data), pl.read_parquet(val_data), params=params)
    except (ModelFolderError, CompressError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None

    from chatforge.runtime.folder import publish_derived

    keys = ("retention", "retention_metric", "student_layers_from_teacher")
    publish_derived(out_dir, outcome.model, outcome.tokenizer, parent_dir=teacher_dir, variant="student",
                    details={"distill": {k: outcome.metrics[k] for k in keys}})
    write_json(outcome.metrics, metrics_path)
    log.info("student: %s retention %.3f (min %.2f)", outcome.metrics["retention_metric"], outcome.metrics["retention"], params.min_retention)
    if params.enforce and not outcome.passed:
        typer.echo(f"distill gate failed: retention {outcome.metrics['retention']:.3f} < distill.min_retention {params.min_retention}. "
                   "Train longer (distill.steps), keep more layers (distill.student_layers) or lower the gate.", err=True)
        raise typer.Exit(code=EXIT_FAILED)


if __name__ == "__main__":
    typer.run(main)
