"""Augment the balanced train split: back-translation through a pivot language, entity swaps from
gazetteers, active/passive rewrites. Every added row carries origin_id and method.

    dvc repro augment

Translations are cached under CACHE (outside DVC's outputs, so a rerun with a larger ratio only
translates new text). See chatforge.data.augment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    train: Annotated[Path, typer.Argument(help="Balanced train turns parquet (the balance stage's output).")],
    translator_dir: Annotated[Path, typer.Argument(help="Translator folder (the translator stage's output).")],
    gazetteer_dir: Annotated[Path, typer.Argument(help="Gazetteer folder: <lang>/<kind>.txt.")],
    out: Annotated[Path, typer.Argument(help="Augmented train turns parquet to write.")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    examples_path: Annotated[Path, typer.Argument(help="Examples JSON to write (a few per method).")],
    cache: Annotated[Path, typer.Option(help="Translation cache folder.")] = Path(".cache/translations"),
    timings: stage.Timings = None,
) -> None:
    with stage.bad_input("augment"):
        params = load_section("augment")

    import polars as pl

    from chatforge.data.augment import augment_turns, read_augment_gazetteers
    from chatforge.data.entities import GazetteerError
    from chatforge.io import write_json, write_parquet
    from chatforge.modeling.translate import CachedTranslator, TranslatorLoadError, back_translator

    log = stage.start("augment")
    turns = pl.read_parquet(stage.require(train, "balance"))
    with stage.bad_input("augment", GazetteerError, TranslatorLoadError):
        gazetteers = read_augment_gazetteers(gazetteer_dir, params)
        translator = back_translator(params.back_translation, built=translator_dir, cache=cache)
    result = augment_turns(turns, params=params, translator=translator, gazetteers=gazetteers)
    write_parquet(result.turns, out)
    write_json(result.examples, examples_path)
    stage.write_metrics(result.metrics, metrics_path, timings=timings)
    if isinstance(translator, CachedTranslator):
        log.info("translation cache: %d hits, %d texts translated", translator.hits, translator.texts_translated)
    log.info("%d rows in, %d added (ratio %.3f)", result.metrics["rows_in"], result.metrics["rows_added"],
             result.metrics["augmented_ratio"])


if __name__ == "__main__":
    typer.run(main)
