"""Step 4 of a chat request, decode: stream the answer as the model decodes it. The first
serve.confidence_tokens tokens decide between answer and fallback (chatforge.runtime.fallback),
the output filter sees text before it is sent, and text a stop string or a sensitive-word term
could still claim is held back, so nothing shown is ever withdrawn. Requests that cannot stream
live (classifiers, logprobs, cache hits, retrieval in the loop's agreement check) get the whole
answer (ChatService.answer) in chunks.
"""

from __future__ import annotations

import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from chatforge.metrics import answer_confidence
from chatforge.params import ServeParams
from chatforge.runtime.fallback import falls_back
from chatforge.runtime.quality import Answer
from chatforge.serving.cache import AnswerCache
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.metrics import ServeMetrics
from chatforge.serving.settings import Turn
from chatforge.serving.wire import Completion, LiveStream, chunks

_OPEN_WORD = re.compile(r"[A-Za-z0-9]+$")


def _open_word(text: str) -> str:
    """A latin word at the very end of streamed text may still grow ("as" -> "assess"): the
    filter judges it only once it is closed."""
    m = _OPEN_WORD.search(text)
    return m.group(0) if m else ""


class DecodeStep:
    """Live streaming of ChatService; the whole-answer path, the cache, the judge and the record
    are the other steps' (`answer`, `_cached`, `replaced`, `record`)."""

    params: ServeParams
    filter: SensitiveFilter
    metrics: ServeMetrics
    cache: AnswerCache
    _pumps: ThreadPoolExecutor

    if TYPE_CHECKING:  # the other steps this one calls (declared for type checkers only: never shadows them)
        def answer(self, t: Turn, *, hit: Answer | None = None) -> Completion: ...  # ChatService
        def _cached(self, t: Turn) -> Answer | None: ...  # CacheStep
        def replaced(self, t: Turn, answer: Answer | None) -> tuple[str, int, str, bool] | None: ...  # JudgeStep
        def record(self, t: Turn, **kwargs: Any) -> Completion: ...  # RecordStep

    def streams_live(self, t: Turn) -> bool:
        """Whether this request's answer streams as it is decoded (a cache miss on a causal LM of
        this server or an upstream; logprobs requests and cache hits send the finished answer in
        chunks)."""
        live_backend = hasattr(t.backend, "scheduler") or hasattr(t.backend, "stream")
        # retrieval in the loop with the agreement check judges the whole answer before it is shown
        loop = getattr(t.backend, "loop", None)
        whole = loop is not None and loop.settings.min_agreement > 0
        return (t.input_action != "blocked" and live_backend and not t.req.logprobs and not whole
                and self.params.confidence_tokens is not None)

    def stream(self, t: Turn, include_usage: bool, stop: threading.Event | None = None) -> Iterator[str]:
        """Server-sent events for a prepared request. Live streaming: text is sent as tokens are
        decoded, once the first serve.confidence_tokens tokens have decided between answer and
        fallback; text that a stop string or a sensitive-word term could still claim is held back,
        so nothing shown is ever withdrawn. A term found later ends the stream (content_filter).
        Setting `stop` (the client went away) stops the decoding at the next token."""
        if not self.streams_live(t):
            yield from self.answer(t).sse(include_usage)
            return
        if (hit := self._cached(t)) is not None:
            yield from self.answer(t, hit=hit).sse(include_usage)
            return
        yield from self._stream_live(t, include_usage, stop or threading.Event())

    def _stream_live(self, t: Turn, include_usage: bool, stop_decoding: threading.Event) -> Iterator[str]:
        p = self.params
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        future = self._decode(t, events, stop_decoding)
        future.add_done_callback(lambda _f: events.put(("done", None)))
        sse = LiveStream(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=t.req.model)
        yield sse.role()
        logprobs: list[float] = []
        text, shown, sent = "", "", 0
        decided, outcome, output_action = False, "answer", "none"
        try:
            while True:
                kind, value = events.get()
                if kind == "token":
                    logprobs.append(value)
                elif kind == "text":
                    text += value
                done = kind == "done"
                if not decided and (done or len(logprobs) >= (p.confidence_tokens or 0)):
                    decided = True
                    if future.done() and future.exception() is not None:
                        break
                    # decided on the first tokens, or on the whole (short) answer once it is done
                    if falls_back(future.result() if done else logprobs, p.confidence_threshold, p.confidence_tokens):
                        outcome = "fallback"
                        break
                if decided:
                    stable = text if done else text[: len(text) - len(_open_word(text))]
                    judged = self.filter.apply(stable)
                    if judged.action == "blocked":
                        outcome, output_action = "blocked", "blocked"
                        t.terms.update(judged.terms)
                        break
                    if judged.action == "masked":
                        output_action = "masked"
                        t.terms.update(judged.terms)
                    shown = judged.text
                    safe = len(stable) if done else self.filter.pending_start(stable)
                    if safe > sent:
                        yield sse.delta(shown[sent:safe])
                        if stop_decoding.is_set():  # resumed after the client left: that delta was not sent
                            outcome = "abandoned"
                            break
                        sent = safe
                if stop_decoding.is_set():  # the client went away (_relay): nothing more is sent
                    outcome = "abandoned"
                    break
                if done:
                    break
        finally:
            stop_decoding.set()  # the client went away, or the answer was decided against: stop decoding
        if outcome == "abandoned":
            # recorded with what the client was sent, under the id it already holds, so it can be rated
            answer = future.result()
            self.record(t, text=shown[:sent], completion_tokens=len(t.backend.token_ids(shown[:sent])),
                        finish="abandoned", answer=answer, output_action=output_action, completion_id=sse.id,
                        created=sse.created)
            return
        answer = future.result()
        if output_action != "none":
            self.metrics.filter_actions.labels(stage="output", action=output_action).inc()
        fallback = outcome == "fallback"
        if fallback:
            text, n, finish, fallback = self.replaced(t, None) or ("", 0, "stop", True)
            for piece in chunks(text):
                yield sse.delta(piece)
        elif outcome == "blocked":  # what was sent stays; the rest is withheld, as OpenAI's content_filter
            text, n, finish = shown[:sent], len(t.backend.token_ids(shown[:sent])), "content_filter"
        else:
            text, n, finish = shown, answer.completion_tokens, answer.finish_reason
            if t.cacheable:  # a whole answer, decoded to its end
                self.cache.set(t.cache_key, answer.to_json())
        completion = self.record(t, text=text, completion_tokens=n, finish=finish, answer=answer, fallback=fallback,
                                 output_action=output_action, completion_id=sse.id, created=sse.created)
        yield from sse.end(completion, include_usage)

    def _decode(self, t: Turn, events: queue.Queue[tuple[str, Any]], stop: threading.Event) -> Future[Answer]:
        """Start decoding `t`, putting ("token", logprob) and ("text", delta) on `events` as they
        come; the Answer when done. A model of this server decodes on its DecodeScheduler; an
        upstream's stream is read on a thread (closed when `stop` is set)."""
        backend: Any = t.backend
        if hasattr(backend, "scheduler"):
            generation = backend.scheduler.submit(
                t.messages, t.gen, on_text=lambda d: events.put(("text", d)),
                on_token=lambda _t, lp: events.put(("token", lp)), cancelled=stop.is_set)
            answer: Future[Answer] = Future()
            generation.add_done_callback(lambda f: answer.set_exception(f.exception()) if f.exception()
                                         else answer.set_result(backend.to_answer(f.result())))
            return answer
        upstream = backend.stream(t.messages, t.gen, lang=t.lang)  # raises before anything is sent

        def pump() -> Answer:
            received, logprobs = [], []
            with upstream:
                for delta, entries in upstream:
                    for _, logprob, _ in entries:
                        events.put(("token", logprob))
                        logprobs.append(logprob)
                    if delta:
                        events.put(("text", delta))
                        received.append(delta)
                    if stop.is_set():  # what arrived so far, for the store; the rest is never read
                        return Answer(text="".join(received), confidence=answer_confidence(logprobs),
                                      finish_reason="stop", prompt_tokens=0, completion_tokens=len(logprobs),
                                      token_logprobs=tuple(logprobs))
                return upstream.answer

        return self._pumps.submit(pump)
