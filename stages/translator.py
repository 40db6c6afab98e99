"""Build the translator behind back-translation: train a compact zh<->en MarianMT model from scratch
on the parallel pairs (or copy `translator.pretrained` in), and report its BLEU on held-out pairs.
When augment does not use it (back-translation off, or its own translator), the folder only
records why it was skipped.

    dvc repro translator

PAIRS are TSV files (header `zh\ten`) or folders of them: dvc.yaml passes the demo pairs and
data/raw/parallel/, where users drop their own pairs. See chatforge.modeling.translator_train.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer

from chatforge.io import EXIT_BAD_INPUT
from chatforge.params import ParamsError, TranslatorParams, load_section


def main(
    out_dir: Annotated[Path, typer.Argument(help="Translator model folder to write.")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    pairs: Annotated[list[Path], typer.Argument(help="Parallel TSV files or folders of *.tsv (zh, en columns).")],
) -> None:
    try:
        params = load_section("translator")
        bt = load_section("augment").back_translation
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    assert isinstance(params, TranslatorParams)

    import torch

    from chatforge.io import atomic_path, setup_logging, write_json
    from chatforge.modeling import translator_train as tt
    from chatforge.modeling.translate import DecodeOptions, load_translator

    log = setup_logging("translator")
    unused = ("augment.back_translation.enabled is false" if not bt.enabled else
              "augment.back_translation.translator names its own model" if bt.translator else None)
    if unused:
        # nothing reads this translator: do not spend minutes training it (enabling back-translation
        # changes these params, so the stage reruns and trains then)
        with atomic_path(out_dir) as tmp:
            write_json({"skipped": True, "reason": unused}, tmp / "skipped.json")
        write_json({"skipped": 1}, metrics_path)
        log.info("translator not built: %s", unused)
        return
    # one thread: the same bytes on every machine (reduction order depends on the thread count), and
    # on a busy build machine extra threads mostly spin; the model is small enough for one core
    torch.set_num_threads(1)
    try:
        data = tt.read_parallel(pairs, max_pairs=params.max_pairs)
        train, heldout = tt.split_heldout(data.pairs, fraction=params.heldout_fraction,
                                          max_heldout=params.max_heldout, seed=params.seed)
        if params.pretrained:
            model, tokenizer = tt.fetch_pretrained(params.pretrained, kind=params.kind,
                                                   trust_remote_code=params.trust_remote_code)
            stats: dict = {"source": params.pretrained}
        else:
            trained = tt.train_translator(train, params)
            model, tokenizer, stats = trained.model, trained.tokenizer, {**trained.metrics, "source": "trained"}
    except tt.ParallelDataError as exc:
        typer.echo(f"translator: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    data_sha = hashlib.sha256(data.pairs.write_csv().encode()).hexdigest()
    params_sha = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest()
    with atomic_path(out_dir) as tmp:
        tt.save_translator(model, tokenizer, tmp, details={**stats, "parent": stats["source"],
                                                           "data_sha256": data_sha, "params_sha256": params_sha})
    # score through the same loading path augment uses
    translator = load_translator(out_dir, kind=params.kind, options=DecodeOptions(num_beams=params.eval_num_beams),
                                 trust_remote_code=params.trust_remote_code)
    scores = tt.bleu_scores(translator, heldout)
    metrics = {**{k: v for k, v in stats.items() if k != "source"}, **scores, "pairs": data.pairs.height,
               "heldout_pairs": heldout.height, **{f"rejected_lines_{k}": v for k, v in sorted(data.rejected.items())}}
    write_json(metrics, metrics_path)
    log.info("held-out BLEU zh->en %.2f, en->zh %.2f", scores["bleu_zh_en"], scores["bleu_en_zh"])


if __name__ == "__main__":
    typer.run(main)
