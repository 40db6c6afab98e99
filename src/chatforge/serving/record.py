"""Step 6 of a chat request, record: the Completion the client receives, counted in the Prometheus
metrics and stored (PII masked; nothing when the request says `store: false`); and the feedback a
client sends about a completion afterwards.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from chatforge.runtime.quality import Answer
from chatforge.serving.errors import APIError
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.metrics import ServeMetrics
from chatforge.serving.settings import Turn
from chatforge.serving.store import FeedbackForbidden, correction_review, record_conversation, record_feedback
from chatforge.serving.wire import Completion, FeedbackRequest

log = logging.getLogger("chatforge.serving")


class RecordStep:
    """Recording and feedback of ChatService."""

    filter: SensitiveFilter
    metrics: ServeMetrics
    sessions: Any  # the store's session factory (chatforge.serving.store.open_store)
    mask: Any  # the PII masker, or None (serve.privacy)

    if TYPE_CHECKING:  # JudgeStep's (declared for type checkers only)
        def confidence(self, answer: Answer) -> float: ...

    def record(self, t: Turn, *, text: str, completion_tokens: int, finish: str, answer: Answer | None,
               cached: bool = False, fallback: bool = False, output_action: str = "none",
               tokens: list[tuple[str, float, list[tuple[str, float]]]] | None = None,
               completion_id: str | None = None, created: int | None = None) -> Completion:
        """The Completion a client receives, counted in the metrics and stored (PII masked) unless
        the request says `store: false`."""
        if fallback:
            self.metrics.fallbacks.labels(variant=t.variant).inc()
        actions = (t.input_action, output_action)
        completion = Completion(
            id=completion_id or f"chatcmpl-{uuid.uuid4().hex}",
            created=created or int(time.time()),
            model=t.req.model,
            text=text,
            finish_reason=finish,
            prompt_tokens=answer.prompt_tokens if answer else 0,
            completion_tokens=completion_tokens,
            variant=t.variant,
            persona=t.persona,
            confidence=self.confidence(answer) if answer else None,
            fallback=fallback,
            cached=cached,
            filter_action="blocked" if "blocked" in actions else "masked" if "masked" in actions else "none",
            want_logprobs=bool(t.req.logprobs),
            tokens=tokens,
        )
        self.metrics.variant_requests.labels(variant=t.variant).inc()
        self.metrics.tokens.labels(kind="prompt", variant=t.variant).inc(completion.prompt_tokens)
        self.metrics.tokens.labels(kind="completion", variant=t.variant).inc(completion.completion_tokens)
        if t.req.store is not False:  # store: false is honoured: nothing of the request is kept
            try:
                record_conversation(
                    self.sessions,
                    messages=t.messages,
                    answer=text,
                    mask=self.mask,
                    id=completion.id,
                    user=t.req.user,
                    api_key_id=t.key_id,
                    variant=t.variant,
                    model_fingerprint=t.backend.fingerprint,
                    persona=t.persona,
                    lang=t.lang,
                    intent=answer.intent if answer else None,
                    latency_ms=(time.perf_counter() - t.started) * 1000,
                    confidence=completion.confidence,
                    fallback=fallback,
                    input_filter=t.input_action,
                    output_filter=output_action,
                    filter_terms=",".join(sorted(t.terms)) or None,
                    cached=cached,
                    finish_reason=finish,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                )
            except Exception:  # the answer still goes out; the store failure is logged and counted
                log.exception("could not record conversation %s", completion.id)
                self.metrics.errors.labels(type="store").inc()
        return completion

    def feedback(self, req: FeedbackRequest, key_id: str | None) -> dict[str, Any]:
        """Store a rating; only the key that created the completion may rate or correct it, and a
        correction goes through the sensitive-word filter and waits for review before export."""
        flagged = req.correction is not None and self.filter.apply(req.correction).action != "none"
        try:
            row = record_feedback(
                self.sessions,
                conversation_id=req.completion_id,
                rating=req.rating,
                correction=req.correction,
                comment=req.comment,
                api_key_id=key_id,
                correction_flagged=flagged,
                mask=self.mask,
            )
        except FeedbackForbidden:
            raise APIError(
                403,
                "this completion was created with another API key: only the key that created a "
                "completion may rate or correct it",
                type="permission_error",
                code="feedback_not_allowed",
                param="completion_id",
            ) from None
        if row is None:
            raise APIError(
                404,
                f"completion {req.completion_id!r} not found: send the `id` of a chat completion "
                "this service returned",
                code="completion_not_found",
                param="completion_id",
            )
        return {"object": "feedback", "id": row, "completion_id": req.completion_id, "rating": req.rating,
                "correction_review": correction_review(req.correction, flagged=flagged)}
