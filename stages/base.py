"""Resolve `model.base` into a plain local transformers folder (+ chatforge.json).

`dvc repro base`. A pip-shipped name, a local folder, a hub id, or `scratch` (a fresh config with a
BPE tokenizer trained on the train split: the split is a dependency for every base so that the
stage graph does not change shape with a param; for the other bases it is read only for its hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge.io import EXIT_BAD_INPUT
from chatforge.io import setup_logging, sha256_file, write_json
from chatforge.params import ParamsError, load_section


def main(
    train_split: Annotated[Path, typer.Argument(help="Train split parquet (the scratch tokenizer's corpus).")],
    out_dir: Annotated[Path, typer.Argument(help="Model folder to write (models/base).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/base.json).")],
    gazetteers: Annotated[Path, typer.Argument(help="Gazetteer folder <lang>/<kind>.txt (slot placeholders).")],
) -> None:
    from chatforge.data.entities import GazetteerError, read_gazetteers
    from chatforge.modeling.base import (
        BaseModelError,
        add_slot_placeholders,
        check_base,
        describe,
        resolve_base,
    )

    try:
        params = load_section("model")
        kind = check_base(params)
        entity_kinds = [k for k in params.slots.kinds if k != "number"]
        gazetteer = read_gazetteers(gazetteers, langs=("zh", "en"), kinds=entity_kinds) if params.slots.enabled else {}
    except (ParamsError, BaseModelError, GazetteerError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    log = setup_logging("base")

    import polars as pl

    from chatforge.knobs import report_knobs
    from chatforge.modeling.base import unknown_share, vocab_knob
    from chatforge.runtime.folder import Manifest, publish_folder, sections_sha256

    train = pl.read_parquet(train_split, columns=["content", "lang"])
    corpus = train["content"].to_list() if kind == "scratch" else None
    log.info("resolving model.base = %s (%s, family %s)", params.base, kind, params.family)
    base = resolve_base(params, corpus=corpus)
    knobs = [vocab_knob(params, len(base.tokenizer), texts=base.details["distinct_texts"])] if kind == "scratch" else []
    unknown = {f"unk_rate_{lang}": unknown_share(base.tokenizer, train.filter(pl.col("lang") == lang)["content"].to_list())
               for lang in ("zh", "en")}
    for lang in ("zh", "en"):
        share = unknown[f"unk_rate_{lang}"]
        if share is not None and share > 0.05:
            log.warning("model.base = %s cannot read %s: %.1f%% of the tokens of the train split's %s text are [UNK] "
                        "(its vocabulary lacks those characters); model.base: scratch trains a tokenizer that reads both "
                        "languages", params.base, lang, 100 * share, lang)
    if params.slots.enabled and params.family == "causal_lm":
        added = add_slot_placeholders(base, params.slots.kinds, max_per_kind=params.slots.max_per_kind, gazetteer=gazetteer)
        log.info("slot placeholders: %d tokens (%s)", len(added), ", ".join(params.slots.kinds))
    info = describe(base.model)
    publish_folder(out_dir, Manifest(
        family=params.family, variant="base", parent=base.parent, base=params.base,
        data_sha256=sha256_file(train_split) if kind == "scratch" else None,
        params_sha256=sections_sha256(params), details={**base.details, **info},
    ), model=base.model, tokenizer=base.tokenizer)
    write_json({"source": kind, **{k: v for k, v in info.items() if v is not None},
                **{k: v for k, v in unknown.items() if v is not None}, "knobs": report_knobs(knobs, log)}, metrics_path)
    log.info("wrote %s (%s, %d parameters)", out_dir, info["model_type"], info["parameters"])


if __name__ == "__main__":
    typer.run(main)
