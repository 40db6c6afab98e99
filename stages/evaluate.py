"""Evaluate every variant the pipeline built on the test split, and the build's gates.

    dvc repro evaluate

Writes reports/evaluate.json (one block per variant + gates; `dvc metrics diff` reads it) and a
details file (answers to test prompts, confusion matrices) for the report stage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from chatforge.params import ParamsError, load_section


def main(
    test_path: Annotated[Path, typer.Argument(help="Test split parquet (turns table).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    details_path: Annotated[Path, typer.Argument(help="Details JSON to write (answers, confusion).")],
    plot_path: Annotated[Path, typer.Argument(help="CSV for `dvc plots`: quality, size, latency per variant.")],
    variant: Annotated[list[str], typer.Option(help="NAME=FOLDER of a variant (repeat).")],
    report: Annotated[list[str], typer.Option(help="NAME=JSON of an earlier stage's metrics (repeat).")] = [],  # noqa: B006
) -> None:
    try:
        params = load_section("evaluate")
        threshold = params.confidence_threshold or load_section("serve").confidence_threshold
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    import polars as pl

    from chatforge.evaluation import evaluate as ev
    from chatforge.io import setup_logging, write_json, write_text

    log = setup_logging("evaluate")
    folders = {k: Path(v) for k, v in (item.split("=", 1) for item in variant)}
    reports = {}
    for k, v in (item.split("=", 1) for item in report):
        reports[k] = json.loads(Path(v).read_text(encoding="utf-8")) if Path(v).exists() else {}
    try:
        convs, counts = ev.test_conversations(pl.read_parquet(test_path))
        samples, sample_counts = ev.build_samples(convs, max_per_lang=params.max_samples_per_lang, seed=params.seed)
    except ev.EvaluationError as exc:
        typer.echo(f"evaluate: {exc}", err=True)
        raise typer.Exit(1) from None
    present, missing = ev.check_variants(folders, params.variants)
    results, details = {}, {"samples": [s.__dict__ for s in samples[:20]], "variants": {}}
    for name, folder in present.items():
        log.info("evaluating %s (%s)", name, folder)
        results[name], details["variants"][name] = ev.evaluate_variant(
            name, folder, convs, samples, params, threshold=threshold
        )
    gates = ev.compute_gates(results, reports, params)
    summary = {**counts, **sample_counts, "variants_missing": ",".join(missing) or "none",
               "gates_failed": sum(g["status"] == "fail" for g in gates.values())}
    write_json({**results, "gates": gates, "summary": summary}, metrics_path)
    write_json(details, details_path)
    write_text(ev.variants_csv(results), plot_path)
    for name, g in gates.items():
        log.info("gate %s: %s (value %s, limit %s)", name, g["status"], g["value"], g["limit"])
    if params.fail_on_gate and summary["gates_failed"]:
        typer.echo(f"evaluate: {summary['gates_failed']} gate(s) failed and evaluate.fail_on_gate is true", err=True)
        sys.exit(1)


if __name__ == "__main__":
    typer.run(main)
