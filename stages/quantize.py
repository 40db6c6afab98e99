"""Export the model chosen by quantize.source to ONNX (with past key/values) and quantize it to INT8.

`dvc repro quantize`. Writes models/onnx (model.onnx, model.int8.onnx, tokenizer, config, manifest;
`load_generator` picks the INT8 file) and reports/quantize.json: file sizes and their ratio, top-1
agreement of INT8 with float on teacher-forced test conversations, greedy-decode equality (INT8 vs
float, and ONNX float vs torch), BLEU float vs INT8, or accuracy drop for a classifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    source_dir: Annotated[Path, typer.Argument(help="Model folder chosen by quantize.source (models/<source>).")],
    test_data: Annotated[Path, typer.Argument(help="Test turns parquet (parity and quality checks).")],
    out_dir: Annotated[Path, typer.Argument(help="ONNX folder to publish (models/onnx).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/quantize.json).")],
    timings: stage.Timings = None,
) -> None:
    import polars as pl

    from chatforge.compress.onnx_export import ExportError
    from chatforge.compress.quantize import build_onnx_folder, gate_failures
    from chatforge.io import atomic_path
    from chatforge.knobs import report_knobs
    from chatforge.runtime.device import DeviceError, onnx_providers
    from chatforge.runtime.folder import ModelFolderError, open_folder

    with stage.bad_input("quantize", ModelFolderError, DeviceError):
        params = load_section("quantize")
        open_folder(source_dir, key="quantize.source")
        onnx_providers(params.providers)  # before any work: names the installed onnxruntime lacks
    log = stage.start("quantize")
    with stage.bad_input("quantize", ModelFolderError, ExportError), atomic_path(out_dir) as tmp:
        knobs: list = []
        metrics = build_onnx_folder(source_dir, tmp, pl.read_parquet(test_data), params=params, knobs=knobs)
    # source: the parent evaluate's int8_retention gate compares with (quantize.source)
    stage.write_metrics({**metrics, "source": params.source, "knobs": report_knobs(knobs, log)}, metrics_path, timings=timings)
    log.info("int8 %.1f MB = %.1f%% of float; top-1 agreement %.3f", metrics["int8_mb"], 100 * metrics["size_ratio"],
             metrics["top1_agreement"])
    if params.enforce and not metrics["gate_ok"]:
        stage.fail("quantize", f"gate failed ({metrics['family']}): {'; '.join(gate_failures(metrics))}. Try "
                   "quantize.block_size 16/32 or keep_float; quantize.min_top1_agreement / max_size_ratio set the bars.")


if __name__ == "__main__":
    typer.run(main)
