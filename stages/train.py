"""Fine-tune the base model on the train data: a chat model (causal_lm) or an intent classifier.

`dvc repro train`. With train.init_from: served, an incremental feedback round instead: the promoted
model (models/served, `chatforge promote`) is continued, weights and tokenizer, on the feedback
conversations plus a seeded replay sample of the others (train.replay_ratio). Checkpoints every train.checkpoint_every_steps go to CHECKPOINTS/<fingerprint>/
(outside DVC's outputs); a killed run resumes from the newest one on the next `dvc repro`. The
model folder is published atomically only when training ends. train.num_processes > 1 re-runs
this script under `accelerate launch`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage
from chatforge.params import load_section


def main(
    base_dir: Annotated[Path, typer.Argument(help="models/${train.init_from}: the base folder, or the promoted model's root.")],
    train_data: Annotated[Path, typer.Argument(help="Train turns parquet.")],
    val_data: Annotated[Path, typer.Argument(help="Val turns parquet.")],
    out_dir: Annotated[Path, typer.Argument(help="Model folder to publish (models/teacher).")],
    metrics_path: Annotated[Path, typer.Argument(help="Metrics JSON (reports/train.json).")],
    live_dir: Annotated[Path, typer.Argument(help="dvclive curves folder (reports/train).")],
    checkpoints: Annotated[Path, typer.Argument(help="Persistent checkpoint root (checkpoints/train).")],
    index_data: Annotated[Path | None, typer.Option(help="Train split parquet: the exchanges the model answers "
                                                         "from when unsure (retrieval in the loop).")] = None,
    timings: stage.Timings = None,
) -> None:
    import polars as pl

    from chatforge.modeling.classifier import read_responses
    from chatforge.modeling import train as tr
    from chatforge.runtime.folder import Manifest, ModelFolderError, publish_folder

    with stage.bad_input("train", ModelFolderError, tr.TrainError):
        mp, tp = load_section("model"), load_section("train")
        train_turns, val_turns = pl.read_parquet(train_data), pl.read_parquet(val_data)
        # init_from served: the promoted model's folder, and the feedback + replay sample (an incremental round)
        base_dir, train_turns, round_metrics = tr.starting_point(tp, base_dir, train_turns)
        tr.check_inputs(mp, tp, base_dir=base_dir, train_turns=train_turns, val_turns=val_turns)
        responses = read_responses(tp.responses_path) if tp.responses_path else None
    if (cmd := tr.relaunch_command(tp.num_processes, sys.argv)) is not None:
        raise typer.Exit(code=subprocess.call(cmd))
    log = stage.start("train")

    data_sha, params_sha, run = tr.fingerprint(data_files=[train_data, val_data], base_dir=base_dir, sections=[mp, tp])
    outcome = tr.train(model_params=mp, train_params=tp, base_dir=base_dir, train_turns=train_turns,
                       val_turns=val_turns, checkpoint_dir=checkpoints / run, live_dir=live_dir, responses=responses)
    if outcome.metrics["process_index"] != 0:
        return  # one process publishes
    publish_folder(out_dir, Manifest(family=mp.family, variant="teacher", parent=str(base_dir), base=mp.base,
                                     data_sha256=data_sha, params_sha256=params_sha,
                                     details={**outcome.details, **({"round": round_metrics} if round_metrics else {})}),
                   model=outcome.model, tokenizer=outcome.tokenizer, responses=outcome.responses,
                   exchanges=tr.index_exchanges(index_data, family=mp.family))
    metrics = {"init_from": tp.init_from, **round_metrics, **outcome.metrics}
    stage.write_metrics({k: v for k, v in metrics.items() if k != "process_index"}, metrics_path, timings=timings)
    tr.clear_checkpoints(checkpoints / run)
    log.info("published %s after %d steps", out_dir, outcome.metrics["steps"])


if __name__ == "__main__":
    typer.run(main)
