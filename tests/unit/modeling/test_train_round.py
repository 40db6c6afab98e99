"""An incremental feedback round (train.init_from: served): train.starting_point and stages/train.py
continue the promoted model, its weights and tokenizer, on the feedback conversations plus a replay
sample; train.init_from: base is unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import trainkit as tk
import yaml

from chatforge.data.replay import replay_mix
from chatforge.modeling.train import TrainError, starting_point
from chatforge.runtime.folder import Manifest, ModelFolderError, write_manifest
from chatforge.runtime.promoted import promote

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]
FEEDBACK = ["c0003", "c0007", "c0010"]


def with_feedback(turns: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    """`turns` with the conversations `ids` coming from the ingest source "feedback"."""
    return turns.with_columns(pl.when(pl.col("conversation_id").is_in(ids)).then(pl.lit("feedback"))
                              .otherwise(pl.col("source")).alias("source"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/served as `chatforge promote` writes it, from a tiny scratch model standing in for models/pruned."""
    tmp = tmp_path_factory.mktemp("round")
    base = tk.build_base(tmp, tk.scratch_params("causal_lm"), tk.turns(24))
    pruned = tmp / "models" / "pruned"
    shutil.copytree(base, pruned)
    write_manifest(pruned, Manifest(family="causal_lm", variant="pruned", base="scratch"))
    onnx = tmp / "models" / "onnx"
    onnx.mkdir()
    (onnx / "config.json").write_text("{}", encoding="utf-8")
    (onnx / "model.int8.onnx").write_bytes(b"int8 graph")
    write_manifest(onnx, Manifest(family="causal_lm", variant="int8", parent=str(pruned)))
    report = tmp / "evaluate.json"
    report.write_text(json.dumps({"summary": {"served_variant": "int8"},
                                  "int8": {"bleu_zh": 10.0, "bleu_en": 20.0, "slot_carry": 0.5}}), encoding="utf-8")
    return promote(pruned, onnx, report, tmp / "models" / "served").root


def test_base_is_the_base_folder_and_every_row(tmp_path: Path) -> None:
    turns = tk.turns(12)
    folder, used, metrics = starting_point(tk.tparams(), tmp_path / "models" / "base", turns)
    assert folder == tmp_path / "models" / "base" and used is turns and metrics == {}


def test_served_is_the_promoted_model_on_feedback_plus_replay(served: Path) -> None:
    turns = with_feedback(tk.turns(24), FEEDBACK)
    folder, used, metrics = starting_point(tk.tparams(init_from="served", replay_ratio=2.0, seed=5), served, turns)
    assert folder == served / "model"
    expected = replay_mix(turns, ratio=2.0, seed=5)
    assert used.equals(expected.turns) and metrics == expected.metrics
    assert (metrics["replay_feedback_conversations"], metrics["replay_conversations"]) == (3, 6)
    ids = set(used["conversation_id"].unique().to_list())
    assert set(FEEDBACK) <= ids and len(ids) == 9


def test_served_without_a_promoted_model_or_without_feedback_is_a_clear_error(served: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="chatforge promote"):
        starting_point(tk.tparams(init_from="served"), tmp_path / "models" / "served", tk.turns(12))
    with pytest.raises(TrainError, match=r"no conversation of the ingest source 'feedback'.*train.init_from: base"):
        starting_point(tk.tparams(init_from="served"), served, tk.turns(12))


def run_train(cwd: Path, model_root: Path) -> subprocess.CompletedProcess[str]:
    args = [str(model_root), "train.parquet", "val.parquet", "models/teacher", "reports/train.json", "reports/train",
            "checkpoints/train"]
    return subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=600)


def test_stage_continues_the_served_model_and_its_tokenizer(served: Path, tmp_path: Path) -> None:
    train = {k: v for k, v in tk.tparams(init_from="served", replay_ratio=1.0, max_steps=2, eval_every_steps=2,
                                         batch_size=2).model_dump().items() if k != "lora"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"family": "causal_lm", "base": "scratch"},
                                                          "train": train}), encoding="utf-8")
    with_feedback(tk.turns(24), FEEDBACK).write_parquet(tmp_path / "train.parquet")
    tk.turns(6, seed=1, prefix="v").write_parquet(tmp_path / "val.parquet")
    done = run_train(tmp_path, served)
    assert done.returncode == 0, done.stderr
    teacher = tmp_path / "models" / "teacher"
    manifest = json.loads((teacher / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["parent"] == str(served / "model") and manifest["details"]["round"]["replay_conversations"] == 3
    assert (teacher / "tokenizer.json").read_bytes() == (served / "model" / "tokenizer.json").read_bytes()
    assert (teacher / "model.safetensors").read_bytes() != (served / "model" / "model.safetensors").read_bytes()
    metrics = json.loads((tmp_path / "reports" / "train.json").read_text(encoding="utf-8"))
    assert (metrics["init_from"], metrics["replay_feedback_conversations"], metrics["steps"]) == ("served", 3, 2)

    tk.turns(24).write_parquet(tmp_path / "train.parquet")  # no feedback in this round's data
    done = run_train(tmp_path, served)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "no conversation of the ingest source 'feedback'" in done.stderr
