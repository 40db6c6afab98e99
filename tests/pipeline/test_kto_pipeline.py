"""The kto stage under the real dvc (tiny profile): off without feedback (models/aligned is the
teacher, byte for byte), then `chatforge feedback export-kto` writes data/raw/preferences/kto.jsonl
and the next `dvc repro` trains on it without retraining the teacher."""

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


def _kto_metrics(project: Project) -> dict:
    return json.loads((project.root / "reports" / "kto.json").read_text(encoding="utf-8"))


def test_kto_is_off_without_feedback_then_learns_from_exported_ratings(project: Project, tmp_path: Path) -> None:
    first = project.repro("distill")
    assert {"train", "kto", "distill"} <= set(first.ran)
    m = _kto_metrics(project)
    assert m["skipped"] is True and m["skip_reason"].startswith("no feedback") and m["rows"] == 0
    teacher, aligned = project.root / "models" / "teacher", project.root / "models" / "aligned"
    assert (aligned / "model.safetensors").read_bytes() == (teacher / "model.safetensors").read_bytes()
    student = json.loads((project.root / "models" / "student" / "chatforge.json").read_text(encoding="utf-8"))
    assert student["parent"] == "models/aligned"

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    sessions = open_store(db)
    for i, (question, answer, rating) in enumerate(RATED):
        record_conversation(sessions, messages=[{"role": "user", "content": question}], answer=answer, id=f"chatcmpl-{i}",
                            variant="int8", model_fingerprint="f", lang="zh" if "包裹" in question else "en",
                            latency_ms=3.0, confidence=0.9, finish_reason="stop")
        record_feedback(sessions, conversation_id=f"chatcmpl-{i}", rating=rating)
    done = subprocess.run([str(Path(sys.executable).parent / "python"), "-m", "chatforge.cli", "feedback", "export-kto",
                           "--database-url", db], cwd=project.root, env=project.env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert (project.root / "data" / "raw" / "preferences" / "kto.jsonl").exists()  # the default --out: where kto reads
    assert "kto" in project.status("distill")

    again = project.repro("distill")
    # ingest depends on all of data/raw, so it reruns, but its output is the same: nothing between it and kto does
    assert set(again.ran) <= {"ingest", "kto", "distill"} and {"kto", "distill"} <= set(again.ran), again.ran
    m = _kto_metrics(project)
    assert m["skipped"] is False and (m["rows"], m["desirable"], m["undesirable"], m["rejected"]) == (6, 3, 3, 0)
    assert m["steps"] == project.param("kto.steps") and m["reward_margin_before"] == 0.0
    assert (aligned / "model.safetensors").read_bytes() != (teacher / "model.safetensors").read_bytes()
    manifest = json.loads((aligned / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["variant"] == "aligned" and manifest["details"]["kto"]["rows"] == 6
