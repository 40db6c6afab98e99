"""Which rated conversations become training data, in the format ingest reads."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.feedback_export import describe_held_back, export_feedback, feedback_rows
from chatforge.serving.store import open_store, record_conversation, record_feedback, set_review

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
    _conv(sessions, "c3")  # thumbs down with an approved correction -> exported with the correction
    _conv(sessions, "c4", fallback=True)  # thumbs up on a fallback -> not exported (the model did not answer)
    _conv(sessions, "c5")  # up then down: the latest rating counts -> not exported
    _conv(sessions, "c6", intent="order", lang="zh")  # no feedback at all -> not exported
    record_feedback(sessions, conversation_id="c1", rating=1)
    record_feedback(sessions, conversation_id="c2", rating=-1)
    c3 = record_feedback(sessions, conversation_id="c3", rating=-1, correction="  It arrives tomorrow. ")
    set_review(sessions, c3, "approved")
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


def test_corrections_are_exported_only_once_approved(tmp_path):
    sessions = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for cid in ("c1", "c2", "c3", "c4", "c5", "c6", "c7"):
        _conv(sessions, cid)
    approved = record_feedback(sessions, conversation_id="c1", rating=-1, correction="Tomorrow.")
    set_review(sessions, approved, "approved")
    record_feedback(sessions, conversation_id="c2", rating=-1, correction="Soon.")  # pending
    record_feedback(sessions, conversation_id="c3", rating=-1, correction="Later.")  # pending
    record_feedback(
        sessions, conversation_id="c4", rating=-1, correction="rude words", correction_flagged=True
    )
    record_feedback(
        sessions, conversation_id="c5", rating=-1, correction="bad words", correction_flagged=True
    )
    rejected = record_feedback(sessions, conversation_id="c6", rating=1, correction="Nonsense.")
    set_review(sessions, rejected, "rejected")
    record_feedback(sessions, conversation_id="c7", rating=-1, correction="Old.")  # superseded: not counted
    record_feedback(sessions, conversation_id="c7", rating=1)  # the current rating: exported as shown

    exported = export_feedback(sessions)
    assert [(r["id"], r["messages"][-1]["content"]) for r in exported.rows] == [
        ("c1", "Tomorrow."),
        ("c7", "It shipped."),
    ]
    assert exported.held_back == {"held": 2, "pending": 2, "rejected": 1, "blocked_input": 0}
    assert describe_held_back(exported.held_back) == (
        "held back: 2 corrections flagged by the sensitive-word filter, "
        "2 awaiting review (`chatforge feedback review`), 1 rejected"
    )

    unreviewed = export_feedback(sessions, include_unreviewed=True)
    assert [(r["id"], r["messages"][-1]["content"]) for r in unreviewed.rows] == [
        ("c1", "Tomorrow."),
        ("c2", "Soon."),
        ("c3", "Later."),
        ("c7", "It shipped."),
    ]
    assert unreviewed.held_back == {"held": 2, "pending": 0, "rejected": 1, "blocked_input": 0}
    assert feedback_rows(sessions, include_unreviewed=True) == unreviewed.rows
    assert describe_held_back({"held": 1, "pending": 0, "rejected": 0}) == (
        "held back: 1 correction flagged by the sensitive-word filter"
    )
    assert describe_held_back({"held": 0, "pending": 0, "rejected": 0}) is None


def _params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: [{name: a, model: m}]\n", encoding="utf-8")
    return params


def test_export_command_says_what_it_held_back(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sessions = open_store(db)
    for cid in ("c1", "c2", "c3", "c4"):
        _conv(sessions, cid)
    record_feedback(sessions, conversation_id="c1", rating=1)
    record_feedback(sessions, conversation_id="c2", rating=-1, correction="Soon.")
    record_feedback(sessions, conversation_id="c3", rating=-1, correction="bad", correction_flagged=True)
    set_review(
        sessions, record_feedback(sessions, conversation_id="c4", rating=-1, correction="No."), "rejected"
    )
    out = tmp_path / "feedback.jsonl"
    args = ["feedback", "export", "--params", str(_params(tmp_path)), "--database-url", db, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote 1 conversations to ")
    assert result.stderr == (
        "held back: 1 correction flagged by the sensitive-word filter, "
        "1 awaiting review (`chatforge feedback review`), 1 rejected\n"
    )
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == ["c1"]
    result = CliRunner().invoke(app, [*args, "--include-unreviewed"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote 2 conversations to ")
    assert result.stderr == "held back: 1 correction flagged by the sensitive-word filter, 1 rejected\n"
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == ["c1", "c2"]


def test_review_command_lists_approves_and_rejects(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sessions = open_store(db)
    for cid in ("chatcmpl-1", "chatcmpl-2", "chatcmpl-3"):
        _conv(sessions, cid)
    long = "It arrives tomorrow\nbefore noon, " + "and the courier will call you first. " * 3
    record_feedback(sessions, conversation_id="chatcmpl-1", rating=-1, correction=long)
    record_feedback(sessions, conversation_id="chatcmpl-2", rating=0, correction="Soon.\x1b[31m")
    record_feedback(
        sessions, conversation_id="chatcmpl-3", rating=-1, correction="bad", correction_flagged=True
    )
    base = ["feedback", "review", "--params", str(_params(tmp_path)), "--database-url", db]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "id\tcompletion_id\trating\tcorrection",
        "1\tchatcmpl-1\t-1\tIt arrives tomorrow before noon, and the courier will call…",
        "2\tchatcmpl-2\t+0\tSoon. [31m",
    ]
    assert result.stderr == "2 pending; approve with `--approve ID`, reject with `--reject ID`\n"
    held = CliRunner().invoke(app, [*base, "--held"])
    assert held.stdout.splitlines()[1:] == ["3\tchatcmpl-3\t-1\tbad"]

    result = CliRunner().invoke(app, [*base, "--approve", "1", "--reject", "2", "--approve", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["1: approved", "3: approved", "2: rejected"]
    result = CliRunner().invoke(app, base)
    assert result.stdout == "" and result.stderr == "no corrections awaiting review\n"
    assert [r["id"] for r in feedback_rows(sessions)] == ["chatcmpl-1", "chatcmpl-3"]

    result = CliRunner().invoke(app, [*base, "--approve", "7"])
    assert result.exit_code == 1
    assert result.stderr == (
        "no correction with id 7; list them with `chatforge feedback review` (the first column is the id).\n"
    )
    result = CliRunner().invoke(app, [*base, "--approve", "1", "--reject", "1"])
    assert result.exit_code == 2
    assert result.stderr == "ids given to both --approve and --reject: [1]; give each id once.\n"


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
