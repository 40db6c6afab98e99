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

from chatforge.io import EXIT_BAD_INPUT
from chatforge.io import setup_logging, write_json
from chatforge.params import ParamsError, load_section


def main(
    source_dir: Annotated[Path, typer.Argument(help="Model folder chosen by prune.source (models/<source>).")],
    train_data: Annotated[Path, typer.Argument(help="Train turns parquet (recovery fine-tune).")],
    val_data: Annotated[Path, typer.Argument(help="Val turns parquet (quality before/after).")],
    out_dir: Annotated[Path, typer.Argument(help="Pruned folder to publish (models/pruned).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/prune.json).")],
) -> None:
    import polars as pl
    from transformers import AutoConfig

    from chatforge.compress.prune import check_prune, prune
    from chatforge.knobs import report_knobs
    from chatforge.modeling.short_train import CompressError
    from chatforge.runtime.folder import ModelFolderError, read_family

    try:
        params = load_section("prune")
        family = read_family(source_dir, key="prune.source")
        check_prune(AutoConfig.from_pretrained(source_dir), ratio=params.ratio, heads=params.heads,
                    round_to=params.round_to, family=family)
    except (ParamsError, ModelFolderError, CompressError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    log = setup_logging("prune")
    try:
        outcome = prune(source_dir, pl.read_parquet(train_data), pl.read_parquet(val_data), params=params)
    except (ModelFolderError, CompressError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None

    from chatforge.runtime.folder import publish_derived

    keys = ("ratio", "criterion", "params_reduction", "magnitude_sparsity")
    publish_derived(out_dir, outcome.model, outcome.tokenizer, parent_dir=source_dir, variant="pruned",
                    details={"prune": {k: outcome.metrics[k] for k in keys}})
    write_json({**outcome.metrics, "knobs": report_knobs(outcome.knobs, log)}, metrics_path)
    m = outcome.metrics
    log.info("pruned %s: params -%.1f%%, MLP %s -> %s, heads %s -> %s, sparsity %.1f%%", source_dir,
             100 * m["params_reduction"], m["mlp_width_before"], m["mlp_width_after"], m["heads_before"], m["heads_after"],
             100 * m["magnitude_sparsity"])


if __name__ == "__main__":
    typer.run(main)
