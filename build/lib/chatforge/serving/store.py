"""The conversation store (SQLAlchemy): every answer, who answered it, how, and what users thought.

SQLite file by default; any SQLAlchemy URL (PostgreSQL for several instances) by configuration.
One `conversations` row per answered request (the OpenAI API is stateless, so a request carries
its whole history), its `messages` in order with the answer last, and `feedback` rows on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the completion id (chatcmpl-...)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    user: Mapped[str | None] = mapped_column(String(256), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(128), index=True)
    model_fingerprint: Mapped[str] = mapped_column(String(128))
    persona: Mapped[str | None] = mapped_column(String(128))
    lang: Mapped[str] = mapped_column(String(8))
    intent: Mapped[str | None] = mapped_column(String(128))  # classifier variants only
    latency_ms: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)  # confidence below the threshold
    input_filter: Mapped[str] = mapped_column(String(16), default="none")  # none | masked | blocked
    output_filter: Mapped[str] = mapped_column(String(16), default="none")
    filter_terms: Mapped[str | None] = mapped_column(Text)  # matched terms, comma separated
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", order_by="Message.position", cascade="all, delete-orphan"
    )
    feedback: Mapped[list[Feedback]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan"
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)  # as stored after masking; the answer as shown

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    rating: Mapped[int] = mapped_column(Integer)  # 1 thumbs up, -1 thumbs down, 0 neutral
    correction: Mapped[str | None] = mapped_column(Text)  # the answer the user wanted instead
    comment: Mapped[str | None] = mapped_column(Text)
    api_key_id: Mapped[str | None] = mapped_column(String(64))

    conversation: Mapped[Conversation] = relationship(back_populates="feedback")


def open_store(url: str) -> sessionmaker[Session]:
    """Create the tables if needed and return a session factory."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # uvicorn runs sync handlers in a thread pool; sqlite objects must be allowed to move between threads
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine: Engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets several worker processes read while one writes
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def record_conversation(
    sessions: sessionmaker[Session], *, messages: Sequence[dict[str, str]], answer: str, **fields: Any
) -> None:
    with sessions.begin() as session:
        conv = Conversation(**fields)
        for i, m in enumerate([*messages, {"role": "assistant", "content": answer}]):
            conv.messages.append(Message(position=i, role=m["role"], content=m["content"]))
        session.add(conv)


def record_feedback(
    sessions: sessionmaker[Session],
    *,
    conversation_id: str,
    rating: int,
    correction: str | None = None,
    comment: str | None = None,
    api_key_id: str | None = None,
) -> int | None:
    """Store feedback; None when the conversation does not exist."""
    with sessions.begin() as session:
        if session.get(Conversation, conversation_id) is None:
            return None
        row = Feedback(
            conversation_id=conversation_id,
            rating=rating,
            correction=correction,
            comment=comment,
            api_key_id=api_key_id,
        )
        session.add(row)
        session.flush()
        return row.id


def variant_feedback_counts(sessions: sessionmaker[Session]) -> list[tuple[str, int, int, int]]:
    """(variant, requests, rated, positive) per variant; a conversation's latest rating counts once."""
    with sessions() as session:
        requests = dict(
            session.execute(select(Conversation.variant, func.count()).group_by(Conversation.variant)).all()
        )
        latest = (
            select(Feedback.conversation_id, func.max(Feedback.id).label("last_id"))
            .where(Feedback.rating != 0)
            .group_by(Feedback.conversation_id)
            .subquery()
        )
        rows = session.execute(
            select(Conversation.variant, Feedback.rating)
            .join(latest, latest.c.conversation_id == Conversation.id)
            .join(Feedback, Feedback.id == latest.c.last_id)
        ).all()
    rated: dict[str, int] = {}
    positive: dict[str, int] = {}
    for variant, rating in rows:
        rated[variant] = rated.get(variant, 0) + 1
        positive[variant] = positive.get(variant, 0) + (rating > 0)
    return [(v, requests[v], rated.get(v, 0), positive.get(v, 0)) for v in requests]


__all__ = [
    "Base",
    "Conversation",
    "Feedback",
    "Message",
    "open_store",
    "record_conversation",
    "record_feedback",
    "variant_feedback_counts",
]
