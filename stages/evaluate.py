"""Evaluate every variant the pipeline built, and the retrieval baseline, on the test split (`dvc repro evaluate`).
Writes reports/evaluate.json (one block per variant + gates + summary; `dvc metrics diff` reads it) and a details file
(full answers to the test prompts, confusion matrices) for the report stage. The served variant (serve.variants[0])
must beat the retrieval baseline on answers and keep the --previous served model's (a promoted folder: the forgetting
gates); a failed gate fails the stage unless evaluate.fail_on_gate is false.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.runtime.device import DeviceError, onnx_providers
from chatforge.params import load_section


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
    previous: Annotated[Path | None, typer.Option(help="The previous served model: a promoted folder, or models/base.")] = None,
    timings: stage.Timings = None,
) -> None:
    from chatforge.data.entities import GazetteerError
    from chatforge.evaluation import evaluate as ev
    from chatforge.evaluation.paraphrase import ParaphraseError
    from chatforge.io import write_json, write_text
    from chatforge.runtime.folder import ModelFolderError

    with stage.bad_input("evaluate", DeviceError):
        params, serve, model = load_section("evaluate"), load_section("serve"), load_section("model")
        threshold = params.confidence_threshold or serve.confidence_threshold
        providers = onnx_providers(load_section("quantize").providers)  # ONNX variants: quantize.providers
    stage.start("evaluate")
    serving = ev.Serving(threshold, serve.confidence_tokens, serve.hybrid, serve.fallback)
    with stage.bad_input("evaluate", ev.EvaluationError, GazetteerError, ParaphraseError, ValueError):
        inputs = ev.read_inputs(test_path, train_path, gazetteers, paraphrases, params=params,
                                slot_kinds=model.slots.kinds, fallbacks=serve.fallback.values())
        folders, reports = ev.named_paths(variant), ev.read_reports(ev.named_paths(report))
    with stage.bad_input("evaluate", ev.EvaluationError, ModelFolderError):
        present, missing, skipped = ev.select_variants(folders, params.variants)
        earlier = ev.read_previous(previous) if previous is not None else None
    done = ev.evaluate_all(inputs, present, reports, params=params, serving=serving, serve_model=serve.variants[0].model,
                           providers=providers, missing=missing, skipped=skipped, previous=earlier)
    write_json(done.details, details_path)
    write_text(done.plot_csv, plot_path)
    stage.write_metrics(done.metrics, metrics_path, timings=timings)
    if params.fail_on_gate and (failures := ev.gate_failures(done.gates)):
        stage.fail("evaluate", "the build does not pass its answer gates (reports/evaluate.json):\n  " + "\n  ".join(failures)
                   + "\nTo record failures without failing the build, set evaluate.fail_on_gate: false in params.yaml.")


if __name__ == "__main__":
    typer.run(main)
