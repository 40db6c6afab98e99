"""Resolve `model.base` into a plain local transformers folder (+ chatforge.json).

`dvc repro base`. A pip-shipped name, a local folder, a hub id, or `scratch` (a fresh config with a
BPE tokenizer trained on the train split: the split is a dependency for every base so that the
stage graph does not change shape with a param; for the other bases it is read only for its hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.io import sha256_file
from chatforge.params import load_section


def main(
    train_split: Annotated[Path, typer.Argument(help="Train split parquet (the scratch tokenizer's corpus).")],
    out_dir: Annotated[Path, typer.Argument(help="Model folder to write (models/base).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/base.json).")],
    gazetteers: Annotated[Path, typer.Argument(help="Gazetteer folder <lang>/<kind>.txt (slot placeholders).")],
    timings: stage.Timings = None,
) -> None:
    from chatforge.data.entities import GazetteerError, read_gazetteers
    from chatforge.modeling.base import BaseModelError, build_base, check_base

    with stage.bad_input("base", BaseModelError, GazetteerError):
        params = load_section("model")
        kind = check_base(params)
        entity_kinds = [k for k in params.slots.kinds if k != "number"]
        gazetteer = read_gazetteers(gazetteers, langs=("zh", "en"), kinds=entity_kinds) if params.slots.enabled else {}
    log = stage.start("base")

    import polars as pl

    from chatforge.knobs import report_knobs
    from chatforge.runtime.folder import Manifest, publish_folder, sections_sha256

    built = build_base(params, kind, pl.read_parquet(train_split, columns=["content", "lang"]), gazetteer=gazetteer)
    base, info = built.base, built.info
    publish_folder(out_dir, Manifest(
        family=params.family, variant="base", parent=base.parent, base=params.base,
        data_sha256=sha256_file(train_split) if kind == "scratch" else None,
        params_sha256=sections_sha256(params), details={**base.details, **info},
    ), model=base.model, tokenizer=base.tokenizer)
    stage.write_metrics({**built.metrics, "knobs": report_knobs(built.knobs, log)}, metrics_path, timings=timings)
    log.info("wrote %s (%s, %d parameters)", out_dir, info["model_type"], info["parameters"])


if __name__ == "__main__":
    typer.run(main)
