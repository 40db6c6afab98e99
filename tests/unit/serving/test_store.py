"""The conversation store: masked messages, retention, feedback integrity, upgrading old databases."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from chatforge.serving.privacy import mask_pii
from chatforge.serving.store import (
    Base,
    Conversation,
    CorrectionForReview,
    Feedback,
    FeedbackForbidden,
    Message,
    add_column_ddl,
    correction_review,
    list_corrections,
    open_store,
    purge_expired,
    record_conversation,
    record_feedback,
    set_review,
    variant_feedback_counts,
)

FIELDS = {"variant": "a", "model_fingerprint": "f", "lang": "zh", "latency_ms": 1.0, "finish_reason": "stop"}


def _masker(text: str) -> str:
    return mask_pii(text, ["phone", "email", "id_number", "card"])


@pytest.fixture
def sessions(tmp_path) -> sessionmaker[Session]:
    return open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def _conv(sessions, cid: str, **extra) -> None:
    record_conversation(
        sessions, messages=[{"role": "user", "content": "hi"}], answer="hello", id=cid, **(FIELDS | extra)
    )


def _feedback(sessions) -> list[tuple[int, str, str | None, int, bool, str | None]]:
    with sessions() as session:
        rows = session.query(Feedback).order_by(Feedback.id).all()
        return [(f.id, f.conversation_id, f.api_key_id, f.rating, f.current, f.review) for f in rows]


def test_stored_messages_hold_the_mask_not_the_number(sessions):
    record_conversation(
        sessions,
        messages=[
            {"role": "system", "content": "客服电话 010-12345678"},
            {"role": "user", "content": "我的手机是13812345678，邮箱a.b@example.com"},
        ],
        answer="好的，我们会打 13812345678 联系您。",
        mask=_masker,
        id="c1",
        **FIELDS,
    )
    with sessions() as session:
        stored = [(m.role, m.content) for m in session.get(Conversation, "c1").messages]
    assert stored == [
        ("system", "客服电话 <PHONE>"),
        ("user", "我的手机是<PHONE>，邮箱<EMAIL>"),
        ("assistant", "好的，我们会打 <PHONE> 联系您。"),
    ]


def test_without_mask_messages_are_stored_as_given(sessions):
    record_conversation(
        sessions, messages=[{"role": "user", "content": "13812345678"}], answer="ok", id="c1", **FIELDS
    )
    with sessions() as session:
        assert [m.content for m in session.get(Conversation, "c1").messages] == ["13812345678", "ok"]


def test_purge_deletes_old_conversations_with_their_messages_and_feedback(sessions):
    now = dt.datetime(2025, 3, 31, 12, 0, 0)
    for cid, age_days in (("old", 31.0), ("edge", 29.999), ("new", 1.0)):
        _conv(sessions, cid, created_at=now - dt.timedelta(days=age_days))
        record_feedback(sessions, conversation_id=cid, rating=1)
    assert purge_expired(sessions, retention_days=None, now=now) == 0
    assert purge_expired(sessions, retention_days=30.0, now=now) == 1
    with sessions() as session:
        assert sorted(
            session.scalars(Conversation.__table__.select().with_only_columns(Conversation.id))
        ) == [
            "edge",
            "new",
        ]
        assert session.query(Message).filter(Message.conversation_id == "old").count() == 0
        assert session.query(Feedback).filter(Feedback.conversation_id == "old").count() == 0
        assert session.query(Message).count() == 4 and session.query(Feedback).count() == 2
    # an aware `now` is converted to UTC: 04-01 12:00+08:00 is 04:00 UTC, minus 30.7 days is
    # 03-01 11:12 UTC, so "edge" (created 03-01 12:01 UTC) stays; read as 12:00 UTC it would go
    aware = dt.datetime(2025, 4, 1, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert purge_expired(sessions, retention_days=30.7, now=aware) == 0
    assert purge_expired(sessions, retention_days=0.5, now=now) == 2
    with pytest.raises(ValueError, match=r"retention_days must be > 0 \(got 0\); use null"):
        purge_expired(sessions, retention_days=0, now=now)


def test_unknown_completion_and_foreign_keys(sessions):
    _conv(sessions, "mine", api_key_id="key_a")
    _conv(sessions, "open")  # served without auth
    assert record_feedback(sessions, conversation_id="nope", rating=1, api_key_id="key_a") is None
    with pytest.raises(FeedbackForbidden, match="completion 'mine' was requested with another API key"):
        record_feedback(sessions, conversation_id="mine", rating=-1, correction="bad", api_key_id="key_b")
    with pytest.raises(FeedbackForbidden):
        record_feedback(sessions, conversation_id="mine", rating=-1)  # no key is another key too
    assert record_feedback(sessions, conversation_id="mine", rating=1, api_key_id="key_a") == 1
    assert record_feedback(sessions, conversation_id="open", rating=1) == 2
    assert _feedback(sessions) == [(1, "mine", "key_a", 1, True, None), (2, "open", None, 1, True, None)]


def test_one_current_rating_per_completion_and_key_history_kept(sessions):
    _conv(sessions, "c1", api_key_id="key_a")
    _conv(sessions, "c2")
    record_feedback(sessions, conversation_id="c1", rating=1, api_key_id="key_a")
    record_feedback(sessions, conversation_id="c1", rating=-1, api_key_id="key_a")
    record_feedback(sessions, conversation_id="c2", rating=1)
    record_feedback(sessions, conversation_id="c2", rating=1, api_key_id="key_b")
    record_feedback(sessions, conversation_id="c2", rating=-1)
    assert _feedback(sessions) == [
        (1, "c1", "key_a", 1, False, None),
        (2, "c1", "key_a", -1, True, None),
        (3, "c2", None, 1, False, None),
        (4, "c2", "key_b", 1, True, None),
        (5, "c2", None, -1, True, None),
    ]


def test_variant_counts_use_current_ratings_only(sessions):
    _conv(sessions, "a1", api_key_id="k")
    _conv(sessions, "a2", api_key_id="k")
    _conv(sessions, "a3", api_key_id="k")
    _conv(sessions, "b1", variant="b")
    record_feedback(sessions, conversation_id="a1", rating=-1, api_key_id="k")
    record_feedback(sessions, conversation_id="a1", rating=1, api_key_id="k")  # a1: up
    record_feedback(sessions, conversation_id="a2", rating=1, api_key_id="k")
    record_feedback(sessions, conversation_id="a2", rating=0, api_key_id="k")  # a2: vote withdrawn
    record_feedback(sessions, conversation_id="b1", rating=1, api_key_id="x")
    record_feedback(sessions, conversation_id="b1", rating=-1, api_key_id="y")  # b1: the latest current, down
    assert sorted(variant_feedback_counts(sessions)) == [("a", 3, 1, 1), ("b", 1, 1, 0)]


def test_corrections_wait_for_review_and_are_masked(sessions):
    _conv(sessions, "c1")
    _conv(sessions, "c2")
    _conv(sessions, "c3")
    pending = record_feedback(
        sessions,
        conversation_id="c1",
        rating=-1,
        correction="请拨打13812345678",
        comment="mail a@b.cn",
        mask=_masker,
    )
    held = record_feedback(
        sessions, conversation_id="c2", rating=-1, correction="bad words", correction_flagged=True
    )
    record_feedback(
        sessions, conversation_id="c3", rating=-1, correction="  ", comment="no"
    )  # blank: no review
    with sessions() as session:
        row = session.get(Feedback, pending)
        assert (row.correction, row.comment, row.review) == ("请拨打<PHONE>", "mail <EMAIL>", "pending")
        assert session.get(Feedback, held).review == "held"
    assert [r.review for r in list_corrections(sessions, statuses=["pending", "held"])] == ["pending", "held"]
    [listed] = list_corrections(sessions)
    assert listed == CorrectionForReview(pending, "c1", listed.created_at, -1, "pending", "请拨打<PHONE>")
    assert set_review(sessions, pending, "approved") is True
    assert set_review(sessions, held, "rejected") is True
    assert set_review(sessions, 3, "approved") is False  # no correction on that row
    assert set_review(sessions, 99, "approved") is False
    assert list_corrections(sessions) == []
    assert [r.review for r in list_corrections(sessions, statuses=["approved", "rejected"])] == [
        "approved",
        "rejected",
    ]
    with pytest.raises(ValueError, match="review status must be 'approved' or 'rejected', got 'held'"):
        set_review(sessions, pending, "held")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown review status\(es\) \['done'\]"):
        list_corrections(sessions, statuses=["done"])


def test_correction_review_rule():
    assert [
        correction_review(None, flagged=False),
        correction_review(" \n", flagged=True),
        correction_review("ok", flagged=False),
        correction_review("ok", flagged=True),
    ] == [None, None, "pending", "held"]


def test_superseded_corrections_are_not_listed(sessions):
    _conv(sessions, "c1")
    record_feedback(sessions, conversation_id="c1", rating=-1, correction="first")
    record_feedback(sessions, conversation_id="c1", rating=-1, correction="second")
    assert [r.correction for r in list_corrections(sessions)] == ["second"]


OLD_FEEDBACK = ("id", "conversation_id", "created_at", "rating", "correction", "comment", "api_key_id")


def _old_database(url: str) -> None:
    """The tables as the previous schema created them (feedback without current / review)."""
    metadata = MetaData()
    conv = Base.metadata.tables["conversations"]
    Table("conversations", metadata, *[c._copy() for c in conv.columns])
    Table("messages", metadata, *[c._copy() for c in Base.metadata.tables["messages"].columns])
    Table(
        "feedback",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("conversation_id", String(64), index=True),
        Column("created_at", DateTime),
        Column("rating", Integer),
        Column("correction", Text),
        Column("comment", Text),
        Column("api_key_id", String(64)),
    )
    engine = create_engine(url)
    metadata.create_all(engine)
    at = dt.datetime(2025, 1, 1)
    with engine.begin() as connection:
        connection.execute(
            metadata.tables["conversations"].insert(),
            [{"id": cid, "created_at": at, "latency_ms": 1.0, **FIELDS} for cid in ("c1", "c2")],
        )
        connection.execute(
            metadata.tables["feedback"].insert(),
            [
                {
                    "conversation_id": "c1",
                    "created_at": at,
                    "rating": 1,
                    "correction": None,
                    "api_key_id": None,
                },
                {
                    "conversation_id": "c1",
                    "created_at": at,
                    "rating": -1,
                    "correction": None,
                    "api_key_id": None,
                },
                {
                    "conversation_id": "c2",
                    "created_at": at,
                    "rating": -1,
                    "correction": "fixed",
                    "api_key_id": "k",
                },
            ],
        )
    engine.dispose()


def test_old_database_gets_the_new_columns(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    _old_database(url)
    assert {c["name"] for c in inspect(create_engine(url)).get_columns("feedback")} == set(OLD_FEEDBACK)
    with caplog.at_level(logging.INFO, logger="chatforge.serving.store"):
        sessions = open_store(url)
    assert {c["name"] for c in inspect(create_engine(url)).get_columns("feedback")} == {
        *OLD_FEEDBACK,
        "current",
        "review",
    }
    added = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upgraded the store")]
    assert added == [
        "upgraded the store: added column feedback.current (ALTER TABLE feedback ADD COLUMN current BOOLEAN DEFAULT 1 NOT NULL)",
        "upgraded the store: added column feedback.review (ALTER TABLE feedback ADD COLUMN review VARCHAR(16))",
    ]
    # rows written before: the latest per (completion, key) is current, corrections wait for review
    assert _feedback(sessions) == [
        (1, "c1", None, 1, False, None),
        (2, "c1", None, -1, True, None),
        (3, "c2", "k", -1, True, "pending"),
    ]
    assert record_feedback(sessions, conversation_id="c1", rating=1) == 4
    assert _feedback(sessions)[1][4] is False
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="chatforge.serving.store"):
        open_store(url)  # already upgraded: nothing to add
    assert [r for r in caplog.records if "upgraded" in r.getMessage()] == []


def test_add_column_ddl_for_postgresql_and_sqlite():
    feedback = Base.metadata.tables["feedback"]
    assert add_column_ddl(feedback, feedback.c.current, postgresql.dialect()) == (
        "ALTER TABLE feedback ADD COLUMN current BOOLEAN DEFAULT true NOT NULL"
    )
    assert add_column_ddl(feedback, feedback.c.review, postgresql.dialect()) == (
        "ALTER TABLE feedback ADD COLUMN review VARCHAR(16)"
    )
    assert add_column_ddl(feedback, feedback.c.current, sqlite.dialect()) == (
        "ALTER TABLE feedback ADD COLUMN current BOOLEAN DEFAULT 1 NOT NULL"
    )


def test_a_column_that_cannot_be_added_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'odd.sqlite'}"
    metadata = MetaData()
    Table(
        "feedback", metadata, Column("id", Integer, primary_key=True), Column("conversation_id", String(64))
    )
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    with pytest.raises(RuntimeError) as caught:
        open_store(url)
    assert str(caught.value) == (
        "table feedback in the database lacks column created_at, which cannot be added without a default; "
        "migrate it by hand or start from a new database_url."
    )
