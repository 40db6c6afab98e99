"""Step 5 of a chat request, judge the answer: show it, or replace it. Below
serve.confidence_threshold (chatforge.runtime.fallback.falls_back, on the first
serve.confidence_tokens tokens), or confident but unlike every past answer to similar questions,
the user gets the past answer the model reranks best (retrieval in the loop,
chatforge.runtime.hybrid) or the fallback message. Replacement texts are cut to the request's
max_tokens.
"""

from __future__ import annotations

from chatforge.params import ServeParams
from chatforge.runtime.fallback import confidence as fallback_confidence
from chatforge.runtime.backends import ModelBackend
from chatforge.runtime.quality import Answer
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.metrics import ServeMetrics
from chatforge.serving.settings import Turn


class JudgeStep:
    """Answer or fall back, for ChatService (both the whole-answer and the streaming path)."""

    params: ServeParams
    filter: SensitiveFilter
    metrics: ServeMetrics

    def confidence(self, answer: Answer) -> float:
        """The served confidence (chatforge.runtime.fallback.confidence): over the first
        serve.confidence_tokens token log-probabilities (a classifier's, or a logprob-less
        upstream's, own confidence)."""
        return fallback_confidence(answer, self.params.confidence_tokens)

    def replaced(self, t: Turn, answer: Answer | None) -> tuple[str, int, str, bool] | None:
        """What is shown instead of the model's answer (chatforge.runtime.hybrid.served_answer), or
        None to show it: below serve.confidence_threshold, or confident but unlike every past answer to
        similar questions (serve.hybrid.min_agreement), the past answer the model reranks best (when
        the folder carries its exchanges and serve.hybrid is on; through the output filter like any
        answer), else the fallback message for an unconfident answer. `answer` None: the stream was
        judged unconfident on its first tokens. (text, completion tokens, finish reason, fallback?)."""
        from chatforge.runtime.hybrid import served_answer

        p = self.params
        text, confidence = (answer.text, self.confidence(answer)) if answer is not None else ("", 0.0)
        text, source = served_answer(text, confidence, threshold=p.confidence_threshold, prompt=t.messages,
                                     lang=t.lang, loop=getattr(t.backend, "loop", None), fallback=p.fallback[t.lang])
        if source == "model":
            return None
        if source == "retrieval":
            out = self.filter.apply(text)
            if out.action != "blocked":
                self.metrics.retrieval_answers.labels(variant=t.variant).inc()
                shown, n, finish = self._shown(t.backend, out.text, t.gen.max_new_tokens, "stop")
                return shown, n, finish, False
        shown, n, finish = self._shown(t.backend, p.fallback[t.lang], t.gen.max_new_tokens, "stop")
        return shown, n, finish, True

    def _shown(self, backend: ModelBackend, text: str, max_tokens: int, finish: str) -> tuple[str, int, str]:
        """A text the service shows instead of the model's (fallback, blocked message), cut to the
        request's max_tokens: (text, its tokens, finish_reason) so usage counts what was received."""
        ids = backend.token_ids(text)
        if len(ids) <= max_tokens:
            return text, len(ids), finish
        return backend.detokenize(ids[:max_tokens]), max_tokens, "length" if finish == "stop" else finish
