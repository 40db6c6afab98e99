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

from chatforge.io import EXIT_BAD_INPUT
from chatforge.params import AugmentParams, ParamsError, load_section


def main(
    train: Annotated[Path, typer.Argument(help="Balanced train turns parquet (the balance stage's output).")],
    translator_dir: Annotated[Path, typer.Argument(help="Translator folder (the translator stage's output).")],
    gazetteer_dir: Annotated[Path, typer.Argument(help="Gazetteer folder: <lang>/<kind>.txt.")],
    out: Annotated[Path, typer.Argument(help="Augmented train turns parquet to write.")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    examples_path: Annotated[Path, typer.Argument(help="Examples JSON to write (a few per method).")],
    cache: Annotated[Path, typer.Option(help="Translation cache folder.")] = Path(".cache/translations"),
) -> None:
    try:
        params = load_section("augment")
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    assert isinstance(params, AugmentParams)

    import polars as pl

    from chatforge.data.augment import augment_turns
    from chatforge.data.entities import GazetteerError, read_gazetteers
    from chatforge.io import setup_logging, write_json, write_parquet
    from chatforge.modeling import translate as tr

    log = setup_logging("augment")
    if not train.exists():
        log.error("%s not found: run `dvc repro balance` first.", train)
        raise typer.Exit(code=EXIT_BAD_INPUT)
    turns = pl.read_parquet(train)
    bt, es = params.back_translation, params.entity_swap
    translator = None
    try:
        use_gazetteers = es.enabled or (bt.enabled and bt.keep_entities)
        gazetteers = read_gazetteers(gazetteer_dir, langs=("zh", "en"), kinds=es.kinds) if use_gazetteers else None
        if bt.enabled and bt.ratio > 0:
            options = tr.DecodeOptions(batch_size=bt.batch_size, num_beams=bt.num_beams, max_new_tokens=bt.max_new_tokens,
                                       no_repeat_ngram_size=bt.no_repeat_ngram_size)
            translator = tr.load_translator(bt.translator or translator_dir, kind=bt.kind, options=options,
                                            trust_remote_code=bt.trust_remote_code)
            if bt.cache:
                translator = tr.CachedTranslator(translator, tr.TranslationCache(cache / "translations.sqlite"))
    except (GazetteerError, tr.TranslatorLoadError) as exc:
        typer.echo(f"augment: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    result = augment_turns(turns, params=params, translator=translator, gazetteers=gazetteers)
    write_parquet(result.turns, out)
    write_json(result.metrics, metrics_path)
    write_json(result.examples, examples_path)
    if isinstance(translator, tr.CachedTranslator):
        log.info("translation cache: %d hits, %d texts translated", translator.hits, translator.texts_translated)
    log.info("%d rows in, %d added (ratio %.3f)", result.metrics["rows_in"], result.metrics["rows_added"],
             result.metrics["augmented_ratio"])


if __name__ == "__main__":
    typer.run(main)
