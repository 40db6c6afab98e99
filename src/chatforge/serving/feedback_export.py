"""Turn what users rated into training data: the rows `chatforge feedback export` writes.

A conversation is judged by its latest current feedback row (each API key's latest rating of it;
superseded ratings are history). It is exported when that row is positive (the answer as shown),
or carries a correction that passed review (the correction replaces the answer: it is what the user
wanted said). Corrections are held back while pending review (unless `include_unreviewed`), when
the sensitive-word filter flagged them ("held") and when a reviewer rejected them; the export says
how many of each. A conversation whose messages (any role) the filter blocked is never exported:
its stored history holds the term as sent. Answers the user never saw from the model (fallbacks, filter blocks) are exported
only with a correction. Rows are sorted by id so exporting the same database twice writes the same
bytes: DVC then sees ingest's input change only when there really is new feedback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from chatforge.serving.store import Conversation

# review statuses a correction can be held back for, and "blocked_input": a conversation whose
# messages the sensitive-word filter blocked (its history holds the term as sent) is never exported
HELD_BACK_REASONS = ("held", "pending", "rejected", "blocked_input")


@dataclass(frozen=True)
class FeedbackExport:
    rows: list[dict[str, Any]]  # one per exported conversation, sorted by id, in the format ingest reads
    # corrections not exported, by review status: held (sensitive-word filter), pending, rejected
    held_back: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HELD_BACK_REASONS, 0))


def export_feedback(sessions: sessionmaker[Session], *, include_unreviewed: bool = False) -> FeedbackExport:
    """The exported rows and the counts of corrections held back (keys: held, pending, rejected).

    include_unreviewed: also export corrections still pending review (never held or rejected ones).
    """
    allowed = {"approved", "pending"} if include_unreviewed else {"approved"}
    rows = []
    held_back = dict.fromkeys(HELD_BACK_REASONS, 0)
    with sessions() as session:
        conversations = session.scalars(
            select(Conversation)
            .where(Conversation.feedback.any())
            .options(selectinload(Conversation.messages), selectinload(Conversation.feedback))
            .order_by(Conversation.id)
        ).all()
        for conv in conversations:
            current = [f for f in conv.feedback if f.current]
            if not current:
                continue
            latest = max(current, key=lambda f: f.id)
            corrected = latest.correction is not None and latest.correction.strip() != ""
            if conv.input_filter == "blocked" and (corrected or latest.rating > 0):
                held_back["blocked_input"] += 1  # its history holds a lexicon term verbatim (block mode)
                continue
            if corrected and latest.review not in allowed:
                # a correction replaces the answer; when it may not be used, the answer shown is not
                # what the user wanted either, so nothing of this conversation is exported
                reason = latest.review if latest.review in held_back else "pending"
                held_back[reason] += 1
                continue
            shown_by_model = not conv.fallback and "blocked" not in (conv.input_filter, conv.output_filter)
            if not corrected and not (latest.rating > 0 and shown_by_model):
                continue
            messages = [{"role": m.role, "content": m.content} for m in conv.messages]
            if corrected:
                messages[-1] = {"role": "assistant", "content": latest.correction.strip()}
            rows.append(
                {
                    "id": conv.id,
                    "messages": messages,
                    "intent": conv.intent,
                    "lang": conv.lang,
                    "rating": latest.rating,
                    "created_at": latest.created_at.isoformat(timespec="seconds") + "Z",
                }
            )
    return FeedbackExport(rows=rows, held_back=held_back)


def feedback_rows(
    sessions: sessionmaker[Session], *, include_unreviewed: bool = False
) -> list[dict[str, Any]]:
    """One dict per exported conversation, sorted by id, in the format ingest reads as `feedback`."""
    return export_feedback(sessions, include_unreviewed=include_unreviewed).rows


def describe_held_back(held_back: dict[str, int]) -> str | None:
    """One line for the user, e.g. "held back: 2 corrections flagged by the sensitive-word filter,
    3 awaiting review (`chatforge feedback review`), 1 rejected"; None when nothing was held back."""
    parts = []
    if held_back.get("held"):
        n = held_back["held"]
        parts.append(f"{n} correction{'s' if n != 1 else ''} flagged by the sensitive-word filter")
    if held_back.get("pending"):
        parts.append(f"{held_back['pending']} awaiting review (`chatforge feedback review`)")
    if held_back.get("rejected"):
        parts.append(f"{held_back['rejected']} rejected")
    if held_back.get("blocked_input"):
        n = held_back["blocked_input"]
        parts.append(f"{n} conversation{'s' if n != 1 else ''} whose messages the sensitive-word filter blocked")
    return "held back: " + ", ".join(parts) if parts else None


__all__ = ["HELD_BACK_REASONS", "FeedbackExport", "describe_held_back", "export_feedback", "feedback_rows"]
