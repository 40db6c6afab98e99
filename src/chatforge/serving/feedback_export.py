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

`export_kto` (`chatforge feedback export-kto`, issue 23) writes the same feedback as unpaired
preference examples for KTO (Ethayarajh et al. 2024; TRL's "unpaired preference" dataset format:
prompt messages, completion messages, a boolean label), thumbs-down included: a thumbs-up gives a
desirable example of the answer shown, a thumbs-down an undesirable one, an approved correction a
desirable example of its text. The supervised export above is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from chatforge.serving.store import Conversation, Feedback

# review statuses a correction can be held back for, and "blocked_input": a conversation whose
# messages the sensitive-word filter blocked (its history holds the term as sent) is never exported
HELD_BACK_REASONS = ("held", "pending", "rejected", "blocked_input")


def _judged(session: Session) -> Iterator[tuple[Conversation, Feedback]]:
    """Each conversation with feedback, by id, with its latest current feedback row (the one it is
    judged by; superseded ratings are history). Conversations whose feedback is all superseded are
    left out."""
    conversations = session.scalars(
        select(Conversation)
        .where(Conversation.feedback.any())
        .options(selectinload(Conversation.messages), selectinload(Conversation.feedback))
        .order_by(Conversation.id)
    ).all()
    for conv in conversations:
        current = [f for f in conv.feedback if f.current]
        if current:
            yield conv, max(current, key=lambda f: f.id)


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
        for conv, latest in _judged(session):
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


# ------------------------------------------------------------------------------------- KTO (issue 23)
KTO_SOURCES = ("thumbs_up", "thumbs_down", "correction")  # what made an example, in the order written
RATINGS = {1: "thumbs_up", -1: "thumbs_down", 0: "neutral"}  # serving.wire.FeedbackRequest.rating
# feedback that is read fine but makes no example: a neutral rating without a correction, and a rating of
# an answer the model did not give (a fallback, a filter's block message): it judges a fixed text, not the model
KTO_SKIP_REASONS = ("neutral", "not_model_answer")


@dataclass(frozen=True)
class KTOExport:
    """What `export_kto` returns.

    rows: one per example, sorted by conversation id, then thumbs_up / thumbs_down before correction:
        {"id": "<conversation id>:<source>", "conversation_id", "feedback_id" (the Feedback row),
         "source": thumbs_up | thumbs_down | correction, "label": True (desirable) | False (undesirable),
         "prompt": [{"role", "content"}, ...] (the conversation up to the answer),
         "completion": [{"role": "assistant", "content"}] (the answer shown, or the correction's text),
         "intent", "lang", "created_at" (the feedback's time, ISO 8601 UTC, "Z")}
        prompt / completion / label are TRL's conversational unpaired-preference format (KTOTrainer reads it).
    rejects: feedback that cannot become an example: {"conversation_id", "feedback_id", "reason"}.
    held_back: corrections not (yet) usable, and conversations with blocked input, as in `export_feedback`;
        nothing of such a feedback row is exported, its rating included.
    skipped: counts by KTO_SKIP_REASONS of feedback read fine that makes no example.
    """

    rows: list[dict[str, Any]]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    held_back: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HELD_BACK_REASONS, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KTO_SKIP_REASONS, 0))


def export_kto(sessions: sessionmaker[Session], *, include_unreviewed: bool = False) -> KTOExport:
    """Rated conversations as KTO examples (see KTOExport for the row shape); deterministic bytes.

    Each conversation is judged by its latest current feedback row, as `export_feedback` does. From it:
    - rating 1 (thumbs up) on an answer the model gave: a desirable example of the answer shown;
    - rating -1 (thumbs down) on an answer the model gave: an undesirable example of the answer shown;
    - an approved correction (or pending, with `include_unreviewed`): a desirable example of its text,
      beside the example its rating gives (a thumbs-down with a correction gives both: KTO learns
      the pair); a correction that is held, pending or rejected holds back the whole feedback row;
    - rating 0 without a correction, or a rating of a fallback / filter message: nothing (counted in skipped).
    Rejects (never a crash, never a silent drop): a rating other than 1, -1 or 0; a stored conversation
    whose last message is not an assistant answer or that has no user message before it; an empty
    answer shown (nothing to learn from: delete the feedback row or correct it).
    """
    allowed = {"approved", "pending"} if include_unreviewed else {"approved"}
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    held_back = dict.fromkeys(HELD_BACK_REASONS, 0)
    skipped = dict.fromkeys(KTO_SKIP_REASONS, 0)
    with sessions() as session:
        for conv, latest in _judged(session):

            def reject(reason: str, conv: Conversation = conv, latest: Feedback = latest) -> None:
                rejects.append({"conversation_id": conv.id, "feedback_id": latest.id, "reason": reason})

            if latest.rating not in RATINGS:
                reject(f"rating {latest.rating!r} is not 1 (thumbs up), -1 (thumbs down) or 0 (neutral): "
                       f"fix or delete feedback row {latest.id} in the store")
                continue
            correction = (latest.correction or "").strip()
            corrected = correction != ""
            if not corrected and latest.rating == 0:
                skipped["neutral"] += 1
                continue
            if conv.input_filter == "blocked":
                held_back["blocked_input"] += 1  # its history holds a lexicon term verbatim (block mode)
                continue
            if corrected and latest.review not in allowed:
                held_back[latest.review if latest.review in held_back else "pending"] += 1
                continue
            messages = [{"role": m.role, "content": m.content} for m in conv.messages]
            if not messages or messages[-1]["role"] != "assistant":
                reject(f"conversation {conv.id!r} does not end with an assistant answer (last role: "
                       f"{messages[-1]['role'] if messages else 'no messages'}): the store row is damaged")
                continue
            prompt, answer = messages[:-1], messages[-1]["content"]
            if not any(m["role"] == "user" for m in prompt):
                reject(f"conversation {conv.id!r} has no user message before its answer: there is no prompt to learn from")
                continue
            common = {"conversation_id": conv.id, "feedback_id": latest.id, "prompt": prompt, "intent": conv.intent,
                      "lang": conv.lang, "created_at": latest.created_at.isoformat(timespec="seconds") + "Z"}
            if latest.rating != 0:
                source = RATINGS[latest.rating]
                shown_by_model = not conv.fallback and "blocked" not in (conv.input_filter, conv.output_filter)
                if not shown_by_model:
                    skipped["not_model_answer"] += 1
                elif answer.strip() == "":
                    reject(f"the answer rated {source} in conversation {conv.id!r} is empty: nothing to learn "
                           f"from; delete feedback row {latest.id} or give it a correction")
                else:
                    rows.append({"id": f"{conv.id}:{source}", **common, "source": source,
                                 "label": latest.rating > 0,
                                 "completion": [{"role": "assistant", "content": answer}]})
            if corrected:
                rows.append({"id": f"{conv.id}:correction", **common, "source": "correction", "label": True,
                             "completion": [{"role": "assistant", "content": correction}]})
    return KTOExport(rows=rows, rejects=rejects, held_back=held_back, skipped=skipped)


__all__ = [
    "HELD_BACK_REASONS",
    "KTO_SKIP_REASONS",
    "KTO_SOURCES",
    "RATINGS",
    "FeedbackExport",
    "KTOExport",
    "describe_held_back",
    "export_feedback",
    "export_kto",
    "feedback_rows",
]
