"""Ratings and corrections become KTO examples (issue 23): exact rows, rejects with reasons, the command."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import update
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.feedback_export import export_feedback, export_kto
from chatforge.serving.store import Feedback, Message, open_store, record_conversation, record_feedback, set_review

PROMPT = [{"role": "system", "content": "You are a shop assistant."}, {"role": "user", "content": "where is my order?"}]
ANSWER = "It shipped."
AT = dt.datetime(2026, 5, 1, 12, 30, 0)
AT_TEXT = "2026-05-01T12:30:00Z"


def _conv(sessions, cid: str, *, answer: str = ANSWER, messages=PROMPT, **extra) -> None:
    fields = {"variant": "a", "model_fingerprint": "f", "lang": "en", "latency_ms": 1.0, "confidence": 0.9,
              "finish_reason": "stop", "intent": "order"}
    record_conversation(sessions, messages=messages, answer=answer, id=cid, **(fields | extra))


def _fix_times(sessions) -> None:
    with sessions.begin() as session:  # record_feedback stamps utcnow; exact rows need a fixed time
        session.execute(update(Feedback).values(created_at=AT))


def _row(cid: str, feedback_id: int, source: str, label: bool, completion: str) -> dict:
    return {"id": f"{cid}:{source}", "conversation_id": cid, "feedback_id": feedback_id, "source": source, "label": label,
            "prompt": PROMPT, "completion": [{"role": "assistant", "content": completion}],
            "intent": "order", "lang": "en", "created_at": AT_TEXT}


def test_thumbs_down_is_undesirable_and_thumbs_up_and_corrections_desirable(tmp_path):
    sessions = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for cid in ("c1", "c2", "c3", "c4", "c5", "c7"):
        _conv(sessions, cid)
    _conv(sessions, "c6", fallback=True)
    up = record_feedback(sessions, conversation_id="c1", rating=1)
    down = record_feedback(sessions, conversation_id="c2", rating=-1)
    corrected = record_feedback(sessions, conversation_id="c3", rating=-1, correction="  It arrives tomorrow. ")
    set_review(sessions, corrected, "approved")
    record_feedback(sessions, conversation_id="c4", rating=-1, correction="Soon.")  # pending: nothing at all
    record_feedback(sessions, conversation_id="c5", rating=0)  # neutral: nothing
    record_feedback(sessions, conversation_id="c6", rating=-1)  # a fallback's fixed text: not the model's answer
    neutral_corrected = record_feedback(sessions, conversation_id="c7", rating=0, correction="Friday.")
    set_review(sessions, neutral_corrected, "approved")
    _fix_times(sessions)

    exported = export_kto(sessions)
    assert exported.rows == [
        _row("c1", up, "thumbs_up", True, "It shipped."),
        _row("c2", down, "thumbs_down", False, "It shipped."),
        _row("c3", corrected, "thumbs_down", False, "It shipped."),
        _row("c3", corrected, "correction", True, "It arrives tomorrow."),
        _row("c7", neutral_corrected, "correction", True, "Friday."),
    ]
    assert exported.rejects == []
    assert exported.held_back == {"held": 0, "pending": 1, "rejected": 0, "blocked_input": 0}
    assert exported.skipped == {"neutral": 1, "not_model_answer": 1}

    # an unapproved correction gives nothing until it is approved; with include_unreviewed it counts
    assert [r["id"] for r in export_kto(sessions, include_unreviewed=True).rows] == [
        "c1:thumbs_up", "c2:thumbs_down", "c3:thumbs_down", "c3:correction", "c4:thumbs_down", "c4:correction",
        "c7:correction"]
    # the supervised export is unchanged: positives and approved corrections as conversations
    assert [r["id"] for r in export_feedback(sessions).rows] == ["c1", "c3", "c7"]


def test_unapproved_corrections_and_blocked_input_give_nothing(tmp_path):
    sessions = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for cid in ("c1", "c2", "c3"):
        _conv(sessions, cid)
    _conv(sessions, "c4", input_filter="blocked")
    record_feedback(sessions, conversation_id="c1", rating=-1, correction="rude", correction_flagged=True)
    set_review(sessions, record_feedback(sessions, conversation_id="c2", rating=-1, correction="No."), "rejected")
    record_feedback(sessions, conversation_id="c3", rating=1, correction="Maybe.")  # pending
    record_feedback(sessions, conversation_id="c4", rating=-1)
    exported = export_kto(sessions)
    assert exported.rows == [] and exported.rejects == []
    assert exported.held_back == {"held": 1, "pending": 1, "rejected": 1, "blocked_input": 1}


def test_bad_feedback_becomes_a_reject_with_a_reason(tmp_path):
    sessions = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _conv(sessions, "c1")
    _conv(sessions, "c2", answer="   ")
    _conv(sessions, "c3")
    _conv(sessions, "c4", messages=[{"role": "system", "content": "Be brief."}])
    _conv(sessions, "c5")
    unknown = record_feedback(sessions, conversation_id="c1", rating=1)
    empty = record_feedback(sessions, conversation_id="c2", rating=1)
    damaged = record_feedback(sessions, conversation_id="c3", rating=-1)
    no_user = record_feedback(sessions, conversation_id="c4", rating=-1)
    good = record_feedback(sessions, conversation_id="c5", rating=-1)
    with sessions.begin() as session:  # the wire allows only -1, 0, 1; another writer of the store may not
        session.execute(update(Feedback).where(Feedback.id == unknown).values(rating=5))
        session.execute(update(Message).where(Message.conversation_id == "c3", Message.role == "assistant")
                        .values(role="user"))
    _fix_times(sessions)

    exported = export_kto(sessions)
    assert exported.rows == [_row("c5", good, "thumbs_down", False, "It shipped.")]
    assert exported.rejects == [
        {"conversation_id": "c1", "feedback_id": unknown,
         "reason": f"rating 5 is not 1 (thumbs up), -1 (thumbs down) or 0 (neutral): fix or delete feedback row {unknown} in the store"},
        {"conversation_id": "c2", "feedback_id": empty,
         "reason": f"the answer rated thumbs_up in conversation 'c2' is empty: nothing to learn from; delete feedback row {empty} or give it a correction"},
        {"conversation_id": "c3", "feedback_id": damaged,
         "reason": "conversation 'c3' does not end with an assistant answer (last role: user): the store row is damaged"},
        {"conversation_id": "c4", "feedback_id": no_user,
         "reason": "conversation 'c4' has no user message before its answer: there is no prompt to learn from"},
    ]


def test_export_kto_command_writes_rows_rejects_and_weights(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sessions = open_store(db)
    for cid in ("c1", "c2", "c3", "c4"):
        _conv(sessions, cid)
    _conv(sessions, "c5", answer="")
    record_feedback(sessions, conversation_id="c1", rating=1)
    record_feedback(sessions, conversation_id="c2", rating=-1)
    record_feedback(sessions, conversation_id="c3", rating=-1)
    record_feedback(sessions, conversation_id="c4", rating=-1, correction="Soon.")
    record_feedback(sessions, conversation_id="c5", rating=-1)
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: [{name: a, model: m}]\n", encoding="utf-8")
    out = tmp_path / "raw/feedback_kto/feedback_kto.jsonl"
    args = ["feedback", "export-kto", "--params", str(params), "--database-url", db, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"wrote 3 KTO examples (1 desirable, 2 undesirable) to {out}\n"
        "weights that meet TRL's [1, 4/3] rule for these counts: desirable_weight=2.0, undesirable_weight=1.0\n")
    rejects = out.with_name("feedback_kto.rejects.jsonl")
    assert result.stderr == (f"rejected 1 feedback rows, reasons in {rejects}\n"
                             "held back: 1 awaiting review (`chatforge feedback review`)\n")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["label"]) for r in rows] == [("c1:thumbs_up", True), ("c2:thumbs_down", False), ("c3:thumbs_down", False)]
    assert [json.loads(line)["conversation_id"] for line in rejects.read_text(encoding="utf-8").splitlines()] == ["c5"]
    first = out.read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert out.read_bytes() == first  # same store, same bytes
