"""The conversation store (SQLAlchemy): every answer, who answered it, how, and what users thought.

SQLite file by default; any SQLAlchemy URL (PostgreSQL for several instances) by configuration.
One `conversations` row per answered request (the OpenAI API is stateless, so a request carries
its whole history), its `messages` in order with the answer last, and `feedback` rows on it.

Privacy: callers pass a `mask` (serving.privacy.pii_masker) so that messages, corrections and
comments are stored with PII already masked, and `purge_expired` deletes conversations older than
the retention. Feedback integrity: only the API key that requested a completion may rate or
correct it, each (completion, key) has one current rating (older ones are kept as history), and a
correction is exported as training data only after review.

An older database (created before a column existed) is upgraded by `open_store`: missing columns
are added with their default, and what was added is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    inspect,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.schema import CreateColumn

log = logging.getLogger(__name__)

ReviewStatus = Literal["pending", "held", "approved", "rejected"]
REVIEW_STATUSES: tuple[str, ...] = ("pending", "held", "approved", "rejected")


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
    # one current rating per (conversation, api_key_id): a newer row sets the older ones to False
    current: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # corrections only (None otherwise): pending | held (sensitive-word filter matched) | approved | rejected
    review: Mapped[str | None] = mapped_column(String(16))

    conversation: Mapped[Conversation] = relationship(back_populates="feedback")


class FeedbackForbidden(PermissionError):
    """Feedback on a completion that another API key requested; the message says whose rule it broke."""


def open_store(url: str) -> sessionmaker[Session]:
    """Create the tables if needed, add the columns an older database lacks, return a session factory.

    url: any SQLAlchemy URL (sqlite:///path creates the folder). Raises RuntimeError naming the
    table and column when an old table lacks a column that cannot be added with a default.
    """
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

    _create_tables(engine)
    return sessionmaker(engine, expire_on_commit=False)


SCHEMA_LOCK_KEY = 0x63686174  # PostgreSQL advisory lock id taken while the tables are created ("chat")


def _create_tables(engine: Engine, *, attempts: int = 6) -> None:
    """create_all, then upgrade_schema; safe when several instances or workers open a new database
    at the same moment. PostgreSQL serialises them with a transaction-scoped advisory lock (the
    second waits, then finds the tables); SQLite, or anything else, retries with a back-off when
    the other creator won the race ("already exists", "database is locked")."""
    for attempt in range(attempts):
        try:
            with engine.begin() as connection:
                if engine.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                Base.metadata.create_all(connection)
            upgrade_schema(engine)
            return
        except DBAPIError as exc:
            if attempt == attempts - 1:
                raise
            log.info("creating the store's tables raced another process (%s); retrying", type(exc.orig).__name__)
            time.sleep(0.05 * 2**attempt)


# ------------------------------------------------------------------------- upgrading old databases
def add_column_ddl(table: Table, column: Column[Any], dialect: Dialect) -> str:
    """`ALTER TABLE t ADD COLUMN c TYPE [DEFAULT d] [NOT NULL]` for `dialect` (names quoted as needed)."""
    spec = CreateColumn(column).compile(dialect=dialect)
    return f"ALTER TABLE {dialect.identifier_preparer.format_table(table)} ADD COLUMN {spec}"


def _backfill(connection: Any, added: set[str]) -> None:
    """Give rows written before a column existed the value the current code would have written."""
    if "feedback.current" in added:
        # the latest row of each (conversation, key) stays current, as record_feedback keeps it
        latest = select(func.max(Feedback.id)).group_by(Feedback.conversation_id, Feedback.api_key_id)
        n = connection.execute(
            update(Feedback).where(Feedback.id.not_in(latest)).values(current=False)
        ).rowcount
        log.info("feedback.current: %d older ratings marked as not current", n)
    if "feedback.review" in added:
        # corrections collected before review existed wait for it like new ones
        has_text = func.length(func.trim(Feedback.correction)) > 0
        n = connection.execute(
            update(Feedback).where(Feedback.correction.is_not(None), has_text).values(review="pending")
        ).rowcount
        if n:
            log.warning(
                "feedback.review: %d existing corrections marked pending; they are exported again once "
                "approved with `chatforge feedback review --approve ID`",
                n,
            )


def upgrade_schema(engine: Engine) -> list[str]:
    """Add every model column an existing table lacks; returns the added ones as 'table.column'.

    Columns are added with ALTER TABLE ... ADD COLUMN and their server default, then rows written
    before get the value the current code writes (see _backfill). Safe when several processes open
    the same database at once: a column another process added meanwhile is not an error.
    Raises RuntimeError when a missing column is NOT NULL without a server default.
    """
    inspector = inspect(engine)
    added: list[str] = []
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable and column.server_default is None:
                raise RuntimeError(
                    f"table {table.name} in the database lacks column {column.name}, which cannot be added "
                    "without a default; migrate it by hand or start from a new database_url."
                )
            ddl = add_column_ddl(table, column, engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.execute(text(ddl))
            except DBAPIError:
                if column.name in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    continue  # another process added it first
                raise
            log.warning("upgraded the store: added column %s.%s (%s)", table.name, column.name, ddl)
            added.append(f"{table.name}.{column.name}")
    if added:
        with engine.begin() as connection:
            _backfill(connection, set(added))
    return added


# ------------------------------------------------------------------------------------- writing
def record_conversation(
    sessions: sessionmaker[Session],
    *,
    messages: Sequence[dict[str, str]],
    answer: str,
    mask: Callable[[str], str] | None = None,
    **fields: Any,
) -> None:
    """Store one answered request: its messages in order (system, user, ...) and the answer last.

    mask: applied to every message content and the answer before storing (serving.privacy.pii_masker).
    fields: the Conversation columns (id, variant, lang, latency_ms, ...).
    """
    with sessions.begin() as session:
        conv = Conversation(**fields)
        for i, m in enumerate([*messages, {"role": "assistant", "content": answer}]):
            content = mask(m["content"]) if mask is not None else m["content"]
            conv.messages.append(Message(position=i, role=m["role"], content=content))
        session.add(conv)


def correction_review(correction: str | None, *, flagged: bool) -> str | None:
    """The review status record_feedback gives a correction: None when there is none (or it is blank),
    "held" when the sensitive-word filter flagged it, else "pending"."""
    if correction is None or correction.strip() == "":
        return None
    return "held" if flagged else "pending"


def record_feedback(
    sessions: sessionmaker[Session],
    *,
    conversation_id: str,
    rating: int,
    correction: str | None = None,
    comment: str | None = None,
    api_key_id: str | None = None,
    correction_flagged: bool = False,
    mask: Callable[[str], str] | None = None,
) -> int | None:
    """Store feedback on a completion; returns the new feedback id, None when the completion is unknown.

    rating: 1 up, -1 down, 0 neutral. The new row becomes the current rating of (completion,
    api_key_id); earlier rows of that pair stay as history with current=False.
    correction: a non-blank one gets review "held" when `correction_flagged` (the caller's
    sensitive-word filter matched it), else "pending"; it is exported only once approved.
    mask: applied to correction and comment before storing.
    Raises FeedbackForbidden when the completion was requested with an API key other than `api_key_id`.
    """
    with sessions.begin() as session:
        # FOR UPDATE (PostgreSQL) serialises two ratings of one completion, so only one stays current
        conv = session.get(Conversation, conversation_id, with_for_update=True)
        if conv is None:
            return None
        if conv.api_key_id is not None and conv.api_key_id != api_key_id:
            raise FeedbackForbidden(
                f"completion {conv.id!r} was requested with another API key: only the key that requested a "
                "completion may rate or correct it. Send feedback with that key."
            )
        same_key = Feedback.api_key_id.is_(None) if api_key_id is None else Feedback.api_key_id == api_key_id
        session.execute(
            update(Feedback)
            .where(Feedback.conversation_id == conversation_id, same_key, Feedback.current.is_(True))
            .values(current=False)
        )
        if mask is not None:
            correction = mask(correction) if correction is not None else None
            comment = mask(comment) if comment is not None else None
        review = correction_review(correction, flagged=correction_flagged)
        row = Feedback(
            conversation_id=conversation_id,
            rating=rating,
            correction=correction,
            comment=comment,
            api_key_id=api_key_id,
            current=True,
            review=review,
        )
        session.add(row)
        session.flush()
        return row.id


def purge_expired(
    sessions: sessionmaker[Session], *, retention_days: float | None, now: dt.datetime | None = None
) -> int:
    """Delete conversations created more than `retention_days` days before `now`, with their messages
    and feedback; returns how many conversations were deleted.

    retention_days: None keeps everything (returns 0); else > 0. now: UTC (naive, or aware and
    converted); default the current time. Raises ValueError when retention_days <= 0.
    """
    if retention_days is None:
        return 0
    if not retention_days > 0:
        raise ValueError(
            f"retention_days must be > 0 (got {retention_days}); use null (None) to keep conversations forever."
        )
    if now is None:
        now = utcnow()
    elif now.tzinfo is not None:
        now = now.astimezone(dt.UTC).replace(tzinfo=None)
    cutoff = now - dt.timedelta(days=retention_days)
    expired = select(Conversation.id).where(Conversation.created_at < cutoff)
    with sessions.begin() as session:
        # bulk deletes, children first: no need to load what is being thrown away
        session.execute(delete(Feedback).where(Feedback.conversation_id.in_(expired)))
        session.execute(delete(Message).where(Message.conversation_id.in_(expired)))
        n = session.execute(delete(Conversation).where(Conversation.created_at < cutoff)).rowcount
    if n:
        log.info("purged %d conversations created before %s UTC", n, cutoff.isoformat(timespec="seconds"))
    return n


# ------------------------------------------------------------------------------------- review
@dataclass(frozen=True)
class CorrectionForReview:
    id: int  # the feedback id that set_review takes
    conversation_id: str  # the completion id
    created_at: dt.datetime  # UTC
    rating: int
    review: str
    correction: str  # as stored (PII masked)


def list_corrections(
    sessions: sessionmaker[Session], *, statuses: Collection[str] = ("pending",)
) -> list[CorrectionForReview]:
    """Current corrections whose review is one of `statuses`, oldest first.

    Superseded rows (a later rating of the same completion by the same key) are not listed: they
    are never exported. Raises ValueError on an unknown status.
    """
    unknown = sorted(s for s in statuses if s not in REVIEW_STATUSES)
    if unknown:
        raise ValueError(
            f"unknown review status(es) {unknown[:5]}; choose from {', '.join(REVIEW_STATUSES)}."
        )
    with sessions() as session:
        rows = session.scalars(
            select(Feedback)
            .where(Feedback.review.in_(list(statuses)), Feedback.current.is_(True))
            .order_by(Feedback.id)
        ).all()
        return [
            CorrectionForReview(
                r.id, r.conversation_id, r.created_at, r.rating, r.review or "", r.correction or ""
            )
            for r in rows
        ]


def set_review(
    sessions: sessionmaker[Session], feedback_id: int, status: Literal["approved", "rejected"]
) -> bool:
    """Approve or reject the correction of feedback row `feedback_id` (any prior status, held included).

    Returns False when no feedback row with that id carries a correction. Raises ValueError on another status.
    """
    if status not in ("approved", "rejected"):
        raise ValueError(f"review status must be 'approved' or 'rejected', got {str(status)[:40]!r}.")
    with sessions.begin() as session:
        n = session.execute(
            update(Feedback)
            .where(Feedback.id == feedback_id, Feedback.review.is_not(None))
            .values(review=status)
        ).rowcount
    return n == 1


# ------------------------------------------------------------------------------------- reading
def variant_feedback_counts(sessions: sessionmaker[Session]) -> list[tuple[str, int, int, int]]:
    """(variant, requests, rated, positive) per variant.

    A conversation counts once, by its latest current non-neutral rating: a key's newer rating
    (a neutral 0 included) replaces its older one.
    """
    with sessions() as session:
        requests = dict(
            session.execute(select(Conversation.variant, func.count()).group_by(Conversation.variant)).all()
        )
        latest = (
            select(Feedback.conversation_id, func.max(Feedback.id).label("last_id"))
            .where(Feedback.rating != 0, Feedback.current.is_(True))
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
    "REVIEW_STATUSES",
    "Base",
    "Conversation",
    "CorrectionForReview",
    "Feedback",
    "FeedbackForbidden",
    "Message",
    "ReviewStatus",
    "add_column_ddl",
    "correction_review",
    "list_corrections",
    "open_store",
    "purge_expired",
    "record_conversation",
    "record_feedback",
    "set_review",
    "upgrade_schema",
    "variant_feedback_counts",
]
