"""An incremental feedback round under the real dvc (tiny profile): build, `chatforge promote`, users
rate answers, both exports, then `train.init_from: served` continues the promoted model on the
feedback plus a replay sample, kto trains on the ratings, and evaluate compares with the promoted build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from chatforge.serving.store import open_store, record_conversation, record_feedback

if TYPE_CHECKING:
    from tests.pipeline.conftest import Project

pytestmark = pytest.mark.pipeline

RATED = [  # (question, answer shown, rating)
    ("我的包裹什么时候到？", "您的包裹明天送达。", 1),
    ("我的包裹什么时候到？", "今日北京晴，15-25℃", -1),
    ("where is my order?", "Your order has shipped and arrives tomorrow.", 1),
    ("where is my order?", "It is sunny today, 15 to 25 degrees.", -1),
    ("I want a refund", "I've opened a return for your order.", 1),
    ("I want a refund", "Hello, how can I help you?", -1),
]


def _cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(Path(sys.executable).parent / "python"), "-m", "chatforge.cli", *args], cwd=project.root,
                          env=project.env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done


def _json(project: Project, relative: str) -> dict:
    return json.loads((project.root / relative).read_text(encoding="utf-8"))


def test_a_feedback_round_continues_the_promoted_model(project: Project, tmp_path: Path) -> None:
    # the build that gets served: its float model is the aligned teacher (not a distilled / pruned one,
    # which a round would have to compress again); promote keeps it as models/served
    project.set_param("quantize.source", "aligned")
    project.set_param("evaluate.variants", ["base", "teacher", "aligned", "student", "pruned", "int8"])
    project.repro("evaluate")
    # quantize records its source, so evaluate's int8 retention compares with the folder it was made from
    assert _json(project, "reports/quantize.json")["source"] == "aligned"
    assert "of aligned" in _json(project, "reports/evaluate.json")["gates"]["int8_retention"]["limit"]
    _cli(project, "promote")
    promoted = project.root / "models" / "served" / "model"
    assert json.loads((promoted / "chatforge.json").read_text(encoding="utf-8"))["variant"] == "aligned"

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    sessions = open_store(db)
    for i, (question, answer, rating) in enumerate(RATED):
        record_conversation(sessions, messages=[{"role": "user", "content": question}], answer=answer, id=f"chatcmpl-{i}",
                            variant="int8", model_fingerprint="f", lang="zh" if "包裹" in question else "en",
                            latency_ms=3.0, confidence=0.9, finish_reason="stop")
        record_feedback(sessions, conversation_id=f"chatcmpl-{i}", rating=rating)
    _cli(project, "feedback", "export", "--database-url", db)  # thumbs-up -> data/raw/feedback (train)
    _cli(project, "feedback", "export-kto", "--database-url", db)  # all ratings -> data/raw/preferences (kto)

    # the round: README's settings scaled to the tiny profile (few conversations: batch 2)
    for key, value in {"train.init_from": "served", "train.max_steps": None, "train.epochs": 2, "train.warmup_steps": 0,
                       "train.lr": 1.0e-3, "train.batch_size": 2, "train.replay_ratio": 4.0,
                       # a 2-layer model trained for seconds moves a lot: the forgetting bars are lowered here, visibly
                       "evaluate.gates.max_bleu_drop": 100.0, "evaluate.gates.max_slot_carry_drop": 1.0}.items():
        project.set_param(key, value)
    status = project.status("evaluate")
    assert {"ingest", "train", "kto"} <= set(status)
    again = project.repro("evaluate")
    assert {"train", "kto", "distill", "quantize", "evaluate"} <= set(again.ran)
    assert "translator" not in again.ran  # the parallel data did not change

    train = _json(project, "reports/train.json")
    assert train["init_from"] == "served" and train["replay_feedback_conversations"] == 3
    assert train["replay_conversations"] == 12 and train["resumed_from_step"] == 0
    teacher = project.root / "models" / "teacher"
    manifest = json.loads((teacher / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["parent"] == "models/served/model" and manifest["details"]["round"]["replay_ratio"] == 4.0
    assert (teacher / "tokenizer.json").read_bytes() == (promoted / "tokenizer.json").read_bytes()
    kto = _json(project, "reports/kto.json")
    assert kto["skipped"] is False and (kto["desirable"], kto["undesirable"]) == (3, 3)
    evaluation = _json(project, "reports/evaluate.json")
    assert evaluation["gates"]["forgetting_bleu_zh"]["status"] in ("pass", "fail", "missing")
    assert evaluation["gates"]["forgetting_bleu_zh"]["status"] != "not_applicable"  # compared with the promoted build
