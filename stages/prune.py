"""Prune the model chosen by prune.source: fewer MLP channels and attention heads, then recover.

`dvc repro prune`. Structural pruning with torch-pruning (ratio and criterion from params), optional
magnitude zeroing below prune.magnitude_threshold (reported as sparsity: a dense file does not
shrink from it), a short recovery fine-tune. Writes an ordinary transformers folder (models/pruned)
and reports/prune.json with parameters, size, quality and latency before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    source_dir: Annotated[Path, typer.Argument(help="Model folder chosen by prune.source (models/<source>).")],
    train_data: Annotated[Path, typer.Argument(help="Train turns parquet (recovery fine-tune).")],
    val_data: Annotated[Path, typer.Argument(help="Val turns parquet (quality before/after).")],
    out_dir: Annotated[Path, typer.Argument(help="Pruned folder to publish (models/pruned).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/prune.json).")],
    timings: stage.Timings = None,
) -> None:
    import polars as pl

    from chatforge.compress.prune import check_source, prune
    from chatforge.knobs import report_knobs
    from chatforge.modeling.short_train import CompressError
    from chatforge.runtime.folder import ModelFolderError, publish_derived

    with stage.bad_input("prune", ModelFolderError, CompressError):
        params = load_section("prune")
        check_source(source_dir, params)
    log = stage.start("prune")
    with stage.bad_input("prune", ModelFolderError, CompressError):
        outcome = prune(source_dir, pl.read_parquet(train_data), pl.read_parquet(val_data), params=params)

    keys = ("ratio", "criterion", "params_reduction", "magnitude_sparsity")
    publish_derived(out_dir, outcome.model, outcome.tokenizer, parent_dir=source_dir, variant="pruned",
                    details={"prune": {k: outcome.metrics[k] for k in keys}})
    m = outcome.metrics
    stage.write_metrics({**m, "knobs": report_knobs(outcome.knobs, log)}, metrics_path, timings=timings)
    log.info("pruned %s: params -%.1f%%, MLP %s -> %s, heads %s -> %s, sparsity %.1f%%", source_dir,
             100 * m["params_reduction"], m["mlp_width_before"], m["mlp_width_after"], m["heads_before"], m["heads_after"],
             100 * m["magnitude_sparsity"])


if __name__ == "__main__":
    typer.run(main)
