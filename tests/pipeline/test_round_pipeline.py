"""Two incremental feedback rounds under the real dvc (tiny profile), as README's rollout runs them:
build, `chatforge promote`, users rate answers, both exports, then `train.init_from: served`
continues the promoted model on the feedback plus a replay sample, kto trains on the ratings, and
evaluate compares with the promoted build. Round 1's model is promoted in turn; round 2's feedback
is poisoned on purpose (thumbs-up on wrong answers to the very questions the test split asks), and
the forgetting gate stops that build at evaluate."""

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


def _rate(project: Project, db: str, rated: list[tuple[list[dict[str, str]], str, int]], *, first_id: int) -> None:
    """Store conversations with the answer shown and its rating, then run both exports."""
    sessions = open_store(db)
    for i, (prompt, answer, rating) in enumerate(rated, start=first_id):
        lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for m in prompt for ch in m["content"]) else "en"
        record_conversation(sessions, messages=prompt, answer=answer, id=f"chatcmpl-{i}", variant="int8",
                            model_fingerprint="f", lang=lang, latency_ms=3.0, confidence=0.9, finish_reason="stop")
        record_feedback(sessions, conversation_id=f"chatcmpl-{i}", rating=rating)
    _cli(project, "feedback", "export", "--database-url", db)  # thumbs-up -> data/raw/feedback (train)
    _cli(project, "feedback", "export-kto", "--database-url", db)  # all ratings -> data/raw/preferences (kto)


POISON = {"zh": "今日北京晴，15-25℃", "en": "It is sunny today, 15 to 25 degrees."}


def test_two_feedback_rounds_continue_the_promoted_model_and_forgetting_stops_a_poisoned_one(
    project: Project, tmp_path: Path
) -> None:
    # the build that gets served: its float model is the aligned teacher (not a distilled / pruned one,
    # which a round would have to compress again); promote keeps it as models/served
    project.set_param("quantize.source", "aligned")
    project.set_param("evaluate.variants", ["aligned", "int8"])
    project.repro("evaluate")
    # quantize records its source, so evaluate's int8 retention compares with the folder it was made from
    assert _json(project, "reports/quantize.json")["source"] == "aligned"
    assert "of aligned" in _json(project, "reports/evaluate.json")["gates"]["int8_retention"]["limit"]
    _cli(project, "promote")
    promoted = project.root / "models" / "served" / "model"
    assert json.loads((promoted / "chatforge.json").read_text(encoding="utf-8"))["variant"] == "aligned"

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    _rate(project, db, [([{"role": "user", "content": q}], a, r) for q, a, r in RATED], first_id=0)

    # round 1: README's settings scaled to the tiny profile (few conversations: batch 2)
    for key, value in {"train.init_from": "served", "train.max_steps": None, "train.epochs": 2, "train.warmup_steps": 0,
                       "train.lr": 1.0e-3, "train.batch_size": 2, "train.replay_ratio": 4.0,
                       # a 2-layer model trained for seconds moves a lot on 4 test turns per language:
                       # round 1's forgetting bars are lowered here, visibly; round 2 restores them
                       "evaluate.gates.max_bleu_drop": 100.0, "evaluate.gates.max_slot_carry_drop": 1.0}.items():
        project.set_param(key, value)
    status = project.status("evaluate")
    assert {"ingest", "train", "kto"} <= set(status)
    again = project.repro("evaluate")
    assert {"train", "kto", "quantize", "evaluate"} <= set(again.ran)
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
    assert evaluation["gates"]["forgetting_bleu_zh"]["status"] == "pass"  # compared with the promoted build
    assert evaluation["previous"]["folder"] == "models/served" and evaluation["previous"]["same_test_samples"] is True
    _cli(project, "promote")  # round 1's model is served now: round 2 continues it
    round1 = _json(project, "models/served/evaluate.json")["int8"]

    # round 2: users thumbs-up a wrong answer to each question the test split asks
    details = _json(project, "reports/evaluate_details.json")
    _rate(project, db, [(s["prompt"], POISON[s["lang"]], 1) for s in details["samples"]], first_id=100)
    # only the feedback changed: dvc sees it at ingest (data/raw/feedback) and kto (data/raw/preferences)
    assert set(project.status("ingest")) == {"ingest"} and "kto" in project.status("kto")
    project.set_param("evaluate.gates.max_bleu_drop", 1.0)  # the defaults
    project.set_param("evaluate.gates.max_slot_carry_drop", 0.01)
    project.set_param("train.epochs", 20)  # the poison is learned, not just indexed
    done = project.run("repro", "evaluate", check=False)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-2000:]
    assert "Running stage 'translator'" not in text  # the parallel data did not change
    assert "gate forgetting_bleu_zh failed" in text and "gate forgetting_bleu_en failed" in text, text[-3000:]
    assert "the round lost what the previous served model knew" in text
    evaluation = _json(project, "reports/evaluate.json")
    for lang in ("zh", "en"):
        gate = evaluation["gates"][f"forgetting_bleu_{lang}"]
        assert gate["status"] == "fail" and gate["value"] > 1.0
        assert evaluation["int8"][f"bleu_{lang}"] < round1[f"bleu_{lang}"] - 1.0
    # what users would have read: the poisoned answers, served for the questions they were given to
    served = _json(project, "reports/evaluate_details.json")["variants"]["int8"]["answers"]
    assert sum(a == POISON[s["lang"]] for s, a in zip(details["samples"], served, strict=True)) >= 4
