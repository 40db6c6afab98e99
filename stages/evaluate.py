"""Evaluate every variant the pipeline built, and the retrieval baseline, on the test split.

    dvc repro evaluate

Writes reports/evaluate.json (one block per variant + gates + summary; `dvc metrics diff` reads
it) and a details file (full answers to the test prompts, confusion matrices) for the report
stage. The served variant (serve.variants[0]) must beat the retrieval baseline on answers; a
failed gate fails the stage unless evaluate.fail_on_gate is false.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from chatforge.io import EXIT_BAD_INPUT, EXIT_FAILED
from chatforge.runtime.device import DeviceError, onnx_providers
from chatforge.params import ParamsError, load_section


def main(
    test_path: Annotated[Path, typer.Argument(help="Test split parquet (turns table).")],
    train_path: Annotated[Path, typer.Argument(help="Train split parquet: what the retrieval baseline looks up.")],
    gazetteers: Annotated[Path, typer.Argument(help="Gazetteer folder <lang>/<kind>.txt: entities counted as slots.")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    details_path: Annotated[Path, typer.Argument(help="Details JSON to write (answers, confusion).")],
    plot_path: Annotated[Path, typer.Argument(help="CSV for `dvc plots`: quality, size, latency per variant.")],
    variant: Annotated[list[str], typer.Option(help="NAME=FOLDER of a variant (repeat).")],
    report: Annotated[list[str], typer.Option(help="NAME=JSON of an earlier stage's metrics (repeat).")] = [],  # noqa: B006
    paraphrases: Annotated[Path | None, typer.Option(help="Paraphrase set JSONL (new phrasings with intents).")] = None,
) -> None:
    try:
        params, serve, model = load_section("evaluate"), load_section("serve"), load_section("model")
        threshold = params.confidence_threshold or serve.confidence_threshold
        providers = onnx_providers(load_section("quantize").providers)  # ONNX variants: quantize.providers
    except (ParamsError, DeviceError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None

    import polars as pl

    from chatforge.data.entities import GazetteerError, read_gazetteers
    from chatforge.evaluation import evaluate as ev
    from chatforge.io import setup_logging, sha256_tree, write_json, write_text
    from chatforge.knobs import report_knobs
    from chatforge.evaluation.paraphrase import IntentJudge, ParaphraseError, read_paraphrases
    from chatforge.runtime.conversation import conversations
    from chatforge.runtime.quality import answer_samples
    from chatforge.runtime.folder import ModelFolderError

    log = setup_logging("evaluate")
    folders = {k: Path(v) for k, v in (item.split("=", 1) for item in variant)}
    reports = {}
    for k, v in (item.split("=", 1) for item in report):
        reports[k] = json.loads(Path(v).read_text(encoding="utf-8")) if Path(v).exists() else {}
    try:
        kinds = [k for k in model.slots.kinds if k != "number"]
        gazetteer = {lang: [e for entries in by_kind.values() for e in entries]
                     for lang, by_kind in read_gazetteers(gazetteers, langs=("zh", "en"), kinds=kinds).items()}
        convs, counts = ev.test_conversations(pl.read_parquet(test_path))
        samples, sample_counts = answer_samples(convs, max_per_lang=params.max_samples_per_lang, seed=params.seed)
        train = pl.read_parquet(train_path)
        questions = read_paraphrases(paraphrases) if paraphrases else []
        judge = IntentJudge(conversations(train.filter(pl.col("method") == "original")),
                            fallbacks=serve.fallback.values()) if questions else None
    except (ev.EvaluationError, GazetteerError, ParaphraseError, ValueError) as exc:
        typer.echo(f"evaluate: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    present, missing = ev.check_variants(folders, params.variants)
    try:
        skipped = ev.unevaluable(present)
    except (ev.EvaluationError, ModelFolderError) as exc:
        typer.echo(f"evaluate: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    for name, reason in skipped.items():
        log.warning("variant %s skipped: %s", name, reason)
    present = {k: v for k, v in present.items() if k not in skipped}
    served = ev.served_variant(serve.variants[0].model, present)
    others = ev.subset(samples, params.other_samples_per_lang)
    log.info("%d samples (%s); served variant: %s", len(samples), sample_counts, served)
    results, details = {}, {"samples": [s.__dict__ for s in samples[:20]], "served_variant": served, "variants": {},
                            "paraphrases": [q.__dict__ for q in questions]}
    serving = ev.Serving(threshold, serve.confidence_tokens, serve.hybrid, serve.fallback)
    results["retrieval"], extra = ev.evaluate_retrieval(train, samples, gazetteer=gazetteer, questions=questions, judge=judge)
    details["variants"]["retrieval"] = ev.align_answers(extra, samples, samples[:20])
    for name, folder in present.items():
        log.info("evaluating %s (%s)", name, folder)
        asked = samples if name == served else others
        results[name], extra = ev.evaluate_variant(name, folder, convs, asked, params, serving=serving, gazetteer=gazetteer,
                                                    providers=providers, questions=questions, judge=judge)
        details["variants"][name] = ev.align_answers(extra, asked, samples[:20])
    references = ev.reference_scores(samples)
    gates = ev.compute_gates(results, reports, params, served=served, references=references)
    summary = {**counts, **sample_counts, **references, "served_variant": served or "none",
               "paraphrase_questions_zh": sum(q.lang == "zh" for q in questions),
               "paraphrase_questions_en": sum(q.lang == "en" for q in questions),
               "other_samples_zh": sum(s.lang == "zh" for s in others), "other_samples_en": sum(s.lang == "en" for s in others),
               "variants_missing": ",".join(missing) or "none", "variants_skipped": ",".join(skipped) or "none",
               "gates_failed": sum(g["status"] == "fail" for g in gates.values())}
    knobs = report_knobs(ev.sample_knobs(convs, params, sample_counts), log)
    # which folder each number is about: `chatforge export` trusts a row only for the folder with this hash
    models = {name: {"folder": str(folder), "sha256": sha256_tree(folder)} for name, folder in present.items()}
    write_json({**results, "skipped": skipped, "gates": gates, "summary": summary, "knobs": knobs, "models": models},
               metrics_path)
    write_json(details, details_path)
    write_text(ev.variants_csv(results), plot_path)
    for name, g in gates.items():
        log.info("gate %s: %s (value %s, limit %s)", name, g["status"], g["value"], g["limit"])
    failures = ev.gate_failures(gates)
    if params.fail_on_gate and failures:
        typer.echo("evaluate: the build does not pass its answer gates (reports/evaluate.json):\n  "
                   + "\n  ".join(failures)
                   + "\nTo record failures without failing the build, set evaluate.fail_on_gate: false in params.yaml.",
                   err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    typer.run(main)
