"""Align the teacher with what users rated: KTO on thumbs-up / thumbs-down (issue 23).

`dvc repro kto`. Reads the rows `chatforge feedback export-kto` wrote (every *.jsonl of the
preferences folder), trains the teacher towards desirable and away from undesirable answers against
a frozen copy of itself, and publishes models/aligned, which distill reads. Off when there is no
feedback (no usable row, fewer than kto.min_rows, kto.steps 0, a classifier): models/aligned is the
teacher unchanged and reports/kto.json says skipped and why. Bad rows are counted rejects with
reasons; a file of only bad rows stops the stage (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    model_dir: Annotated[Path, typer.Argument(help="Model folder to align (models/teacher).")],
    preferences: Annotated[Path, typer.Argument(help="KTO rows: a JSONL file or a folder of them (data/raw/preferences).")],
    out_dir: Annotated[Path, typer.Argument(help="Aligned folder to publish (models/aligned).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/kto.json).")],
    timings: stage.Timings = None,
) -> None:
    from chatforge.modeling import preference as pref
    from chatforge.modeling.kto import KTOError
    from chatforge.runtime.folder import ModelFolderError, open_folder, publish_derived

    with stage.bad_input("kto", ModelFolderError, pref.PreferenceError, KTOError):
        params = load_section("kto")
        manifest = open_folder(model_dir, key="kto (input model folder)")
        rows = pref.read_preferences(preferences)
    log = stage.start("kto")
    reason = pref.skip_reason(rows, params, family=manifest.family)
    metrics = {"skipped": reason is not None, "skip_reason": reason or "", **rows.metrics()}
    if reason is not None:
        log.info("kto off: %s; %s published unchanged as %s", reason, model_dir, out_dir)
        pref.publish_unchanged(model_dir, out_dir, variant="aligned", details={"kto": {"skipped": True, "reason": reason}})
    else:
        with stage.bad_input("kto", ModelFolderError, pref.PreferenceError, KTOError):
            outcome = pref.train_kto(model_dir, rows.examples, params=params)
        metrics.update(outcome.metrics)
        keys = ("desirable_weight", "undesirable_weight", "steps", "reward_margin_after", "kl_after")
        publish_derived(out_dir, outcome.model, outcome.tokenizer, parent_dir=model_dir, variant="aligned",
                        details={"kto": {"skipped": False, "rows": len(rows.examples), **{k: metrics[k] for k in keys}}})
        log.info("kto: %d rows (%d desirable), loss %.4f -> %.4f, reward margin %s, KL %.4f", len(rows.examples),
                 rows.desirable, metrics["loss_first"], metrics["loss_last"], metrics["reward_margin_after"], metrics["kl_after"])
    stage.write_metrics(metrics, metrics_path, timings=timings)
    if rows.rejects:
        log.warning("%d rows rejected (reasons in %s: rejected_*)", len(rows.rejects), metrics_path)


if __name__ == "__main__":
    typer.run(main)
