"""Distil the teacher into a smaller student (every k-th layer, KL at temperature + hard labels).

`dvc repro distill`. Writes the student folder and reports/distill.json: teacher and student
quality on val, their ratio (retention), parameters, size and latency. With distill.enforce true the
stage fails when retention < distill.min_retention (the number is recorded either way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    teacher_dir: Annotated[Path, typer.Argument(help="Teacher model folder (models/aligned: the teacher after kto).")],
    train_data: Annotated[Path, typer.Argument(help="Train turns parquet.")],
    val_data: Annotated[Path, typer.Argument(help="Val turns parquet.")],
    out_dir: Annotated[Path, typer.Argument(help="Student folder to publish (models/student).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/distill.json).")],
    timings: stage.Timings = None,
) -> None:
    import polars as pl

    from chatforge.modeling.distill import CompressError, distill
    from chatforge.runtime.folder import ModelFolderError, open_folder, publish_derived

    with stage.bad_input("distill", ModelFolderError, CompressError):
        params = load_section("distill")
        open_folder(teacher_dir, key="distill (teacher folder)")
    log = stage.start("distill")
    with stage.bad_input("distill", ModelFolderError, CompressError):
        outcome = distill(teacher_dir, pl.read_parquet(train_data), pl.read_parquet(val_data), params=params)

    keys = ("retention", "retention_metric", "student_layers_from_teacher")
    publish_derived(out_dir, outcome.model, outcome.tokenizer, parent_dir=teacher_dir, variant="student",
                    details={"distill": {k: outcome.metrics[k] for k in keys}})
    stage.write_metrics(outcome.metrics, metrics_path, timings=timings)
    log.info("student: %s retention %.3f (min %.2f)", outcome.metrics["retention_metric"], outcome.metrics["retention"], params.min_retention)
    if params.enforce and not outcome.passed:
        stage.fail("distill", f"gate failed: retention {outcome.metrics['retention']:.3f} < distill.min_retention "
                   f"{params.min_retention}. Train longer (distill.steps), keep more layers (distill.student_layers) "
                   "or lower the gate.")


if __name__ == "__main__":
    typer.run(main)
