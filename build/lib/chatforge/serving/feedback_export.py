"""Turn what users rated into training data: the rows `chatforge feedback export` writes.

A conversation is exported when its latest feedback is positive (the answer as shown), or carries a
correction (the correction replaces the answer: it is what the user wanted said). Answers the user
never saw from the model (fallbacks, filter blocks) are exported only with a correction. Rows are
sorted by id so exporting the same database twice writes the same bytes: DVC then sees ingest's
input change only when there really is new feedback.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from chatforge.serving.store import Conversation


def feedback_rows(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """One dict per exported conversation, in the format ingest reads as `feedback`."""
    rows = []
    with sessions() as session:
        conversations = session.scalars(
            select(Conversation)
            .where(Conversation.feedback.any())
            .options(selectinload(Conversation.messages), selectinload(Conversation.feedback))
            .order_by(Conversation.id)
        ).all()
        for conv in conversations:
            latest = max(conv.feedback, key=lambda f: f.id)
            corrected = latest.correction is not None and latest.correction.strip() != ""
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
    return rows


__all__ = ["feedback_rows"]
