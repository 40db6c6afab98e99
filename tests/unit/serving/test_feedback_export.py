"""Which rated conversations become training data, in the format ingest reads."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.feedback_export import feedback_rows
from chatforge.serving.store import open_store, record_conversation, record_feedback

MSGS = [{"role": "user", "content": "where is my order?"}]


def _conv(sessions, cid: str, **extra) -> None:
    fields = {
        "variant": "a",
        "model_fingerprint": "f",
        "lang": "en",
        "latency_ms": 1.0,
        "confidence": 0.9,
        "finish_reason": "stop",
    }
    record_conversation(sessions, messages=MSGS, answer="It shipped.", id=cid, **(fields | extra))


def test_positive_and_corrected_conversations_are_exported(tmp_path):
    sessions = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _conv(sessions, "c1")  # thumbs up -> exported as shown
    _conv(sessions, "c2")  # thumbs down -> not exported
    _conv(sessions, "c3")  # thumbs down with a correction -> exported with the correction
    _conv(sessions, "c4", fallback=True)  # thumbs up on a fallback -> not exported (the model did not answer)
    _conv(sessions, "c5")  # up then down: the latest rating counts -> not exported
    _conv(sessions, "c6", intent="order", lang="zh")  # no feedback at all -> not exported
    record_feedback(sessions, conversation_id="c1", rating=1)
    record_feedback(sessions, conversation_id="c2", rating=-1)
    record_feedback(sessions, conversation_id="c3", rating=-1, correction="  It arrives tomorrow. ")
    record_feedback(sessions, conversation_id="c4", rating=1)
    record_feedback(sessions, conversation_id="c5", rating=1)
    record_feedback(sessions, conversation_id="c5", rating=-1)
    rows = feedback_rows(sessions)
    assert [r["id"] for r in rows] == ["c1", "c3"]
    assert rows[0]["messages"] == [*MSGS, {"role": "assistant", "content": "It shipped."}]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "It arrives tomorrow."}
    assert {k: rows[0][k] for k in ("intent", "lang", "rating")} == {
        "intent": None,
        "lang": "en",
        "rating": 1,
    }
    assert rows[0]["created_at"].endswith("Z")


def test_export_command_is_deterministic(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sessions = open_store(db)
    _conv(sessions, "c1")
    record_feedback(sessions, conversation_id="c1", rating=1)
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: [{name: a, model: m}]\n", encoding="utf-8")
    out = tmp_path / "raw/feedback/feedback.jsonl"
    args = ["feedback", "export", "--params", str(params), "--database-url", db, "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    first = out.read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert out.read_bytes() == first
    row = json.loads(first.decode().splitlines()[0])
    assert set(row) == {"id", "messages", "intent", "lang", "rating", "created_at"}
