"""Build the translator behind back-translation: train a compact zh<->en MarianMT model from scratch
on the parallel pairs (or copy `translator.pretrained` in), and report its BLEU on held-out pairs.
When augment does not use it (back-translation off, or its own translator), the folder only
records why it was skipped.

    dvc repro translator

PAIRS are TSV files (header `zh\ten`) or folders of them: dvc.yaml passes the demo pairs and
data/raw/parallel/, where users drop their own pairs. See chatforge.modeling.translator_train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    out_dir: Annotated[Path, typer.Argument(help="Translator model folder to write.")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    pairs: Annotated[list[Path], typer.Argument(help="Parallel TSV files or folders of *.tsv (zh, en columns).")],
    timings: stage.Timings = None,
) -> None:
    with stage.bad_input("translator"):
        params = load_section("translator")
        bt = load_section("augment").back_translation

    import torch

    from chatforge.io import atomic_path, write_json
    from chatforge.modeling import translator_train as tt

    log = stage.start("translator")
    if unused := tt.unused_reason(enabled=bt.enabled, translator=bt.translator):  # nothing reads this translator: do not spend minutes training it
        with atomic_path(out_dir) as tmp:
            write_json({"skipped": True, "reason": unused}, tmp / "skipped.json")
        stage.write_metrics({"skipped": 1}, metrics_path, timings=timings)
        log.info("translator not built: %s", unused)
        return
    # one thread: the same bytes on every machine (reduction order depends on the thread count), and
    # on a busy build machine extra threads mostly spin; the model is small enough for one core
    torch.set_num_threads(1)
    with stage.bad_input("translator", tt.ParallelDataError):
        built = tt.build_translator(pairs, params)
    with atomic_path(out_dir) as tmp:
        tt.save_translator(built.model, built.tokenizer, tmp, details=built.details)
    metrics = tt.score_translator(out_dir, built, params)
    stage.write_metrics(metrics, metrics_path, timings=timings)
    log.info("held-out BLEU zh->en %.2f, en->zh %.2f", metrics["bleu_zh_en"], metrics["bleu_en_zh"])


if __name__ == "__main__":
    typer.run(main)
