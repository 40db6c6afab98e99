"""The OpenAI-compatible chat service: `create_app(config)` builds one FastAPI app.

A request goes: (guard: header size, API key and rate limit, body size, valid JSON and Unicode)
-> bounds and unsupported features -> persona and variant (A/B by user hash) -> input filter ->
cache -> model -> output filter -> confidence threshold -> store (PII masked) -> response.
Every error leaves in the OpenAI error shape {"error": {"message", "type", "code", "param"}}
with a message saying what to change and `param` naming the public field; no stack trace ever
reaches a client.

Streaming sends the answer as server-sent-event chunks (one per token, with its log-probability
when asked) only after the safety filter and the confidence threshold have seen the whole answer
(both need it), so a stream never shows text that is then withdrawn.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.data.lang import detect_lang
from chatforge.metrics import answer_confidence
from chatforge.params import ServeVariant
from chatforge.runtime.backends import Answer, ModelBackend
from chatforge.runtime.decode import GenerationConfig
from chatforge.serving.ab import assign_variant
from chatforge.serving.auth import KeyRing, read_keys
from chatforge.serving.backends import PromptError, open_backend
from chatforge.serving.cache import AnswerCache, LRUCache, RedisCache, cache_key
from chatforge.serving.config import ServeConfig
from chatforge.serving.errors import APIError, error_body
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.guard import RequestGuard
from chatforge.serving.metrics import ServeMetrics
from chatforge.serving.privacy import pii_masker
from chatforge.serving.ratelimit import KeyRateLimiter
from chatforge.serving.store import (
    FeedbackForbidden,
    correction_review,
    open_store,
    purge_expired,
    record_conversation,
    record_feedback,
)
from chatforge.serving.wire import (
    ChatCompletionRequest,
    Completion,
    FeedbackRequest,
    LiveStream,
    chunks,
    public_param,
    shown_field,
)

log = logging.getLogger("chatforge.serving")

STATIC = Path(__file__).parent / "static"
BASE_MODEL = "chatforge"  # the A/B-routed model name; a variant name pins that variant
UNSUPPORTED = "unsupported_value"


class RedactQuery(logging.Filter):
    """Access-log lines keep the path and drop the query string: a client that puts its API key in
    the URL (`?api_key=...`) must not leave it in the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (args[0], args[1], args[2].split("?", 1)[0] + "?[redacted]", args[3], args[4])
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuery) for f in access.filters):
        access.addFilter(RedactQuery())


@dataclass
class Turn:
    """One request after every check (ChatService.prepare), before the model answers it."""

    req: ChatCompletionRequest
    key_id: str | None
    started: float  # perf_counter at arrival
    variant: str
    backend: ModelBackend
    persona: str | None
    messages: list[dict[str, str]]  # after the input filter and the persona's system prompt
    lang: str
    input_action: str
    terms: set[str] = field(default_factory=set)
    gen: GenerationConfig = field(default_factory=GenerationConfig)
    cache_key: str = ""
    cacheable: bool = False


_OPEN_WORD = re.compile(r"[A-Za-z0-9]+$")


def _open_word(text: str) -> str:
    """A latin word at the very end of streamed text may still grow ("as" -> "assess"): the
    filter judges it only once it is closed."""
    m = _OPEN_WORD.search(text)
    return m.group(0) if m else ""


# --------------------------------------------------------------------------------------- app
def unsupported_fields(req: ChatCompletionRequest) -> list[tuple[str, str]]:
    """(field, why) for each request field this server does not honour as asked, in a fixed order:
    OpenAI fields beyond their neutral value (a penalty of 0, an empty logit_bias, text-only
    modalities, the default service tier are honoured exactly), then fields OpenAI does not define."""
    out = []
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            out.append((name, "repetition penalties are not applied by this server; omit it or send 0"))
    if req.logit_bias:
        out.append(("logit_bias", "token biases are not applied by this server; omit it or send {}"))
    if req.modalities is not None and [m for m in req.modalities if m != "text"]:
        out.append(("modalities", "this model answers in text only; omit modalities or send [\"text\"]"))
    if req.audio is not None:
        out.append(("audio", "this model answers in text only; omit audio"))
    if req.functions:
        out.append(("functions", "function calling is not supported by this model; omit functions"))
    if req.function_call not in (None, "none", "auto"):
        out.append(("function_call", "function calling is not supported by this model; omit function_call"))
    if req.metadata:
        out.append(("metadata", "this server does not store request metadata; omit it"))
    if req.service_tier not in (None, "auto", "default"):
        out.append(("service_tier", "this server has one service tier; omit service_tier or send 'auto'"))
    for name in ("reasoning_effort", "prediction", "web_search_options"):
        if getattr(req, name) is not None:
            out.append((name, "not supported by this model; omit it"))
    for name in sorted(req.model_extra or {}):
        out.append((shown_field(name), "unknown field: not an OpenAI chat completion field this server takes (README, "
                           "\"OpenAI request fields\"); remove it"))
    return out


class ChatService:
    """Everything one app instance holds: models, cache, store, filter, keys, limits, metrics."""

    def __init__(self, config: ServeConfig, backends: dict[str, ModelBackend] | None = None) -> None:
        p = self.params = config.params
        self.config = config
        self.metrics = ServeMetrics()
        if config.threads:
            import torch

            # with several workers per host, all-cores-per-process oversubscribes the CPU badly
            torch.set_num_threads(config.threads)
        self.backends = backends or {v.name: self._open(v) for v in p.variants}
        missing = [v.name for v in p.variants if v.name not in self.backends]
        if missing:
            raise ValueError(f"no backend for variants {missing}")
        self.weights = [(v.name, v.weight) for v in p.variants]
        for backend in self.backends.values():
            if (scheduler := getattr(backend, "scheduler", None)) is not None:
                scheduler.on_batch = self.metrics.batch_size.observe
        self.filter = SensitiveFilter.from_files(p.filter.lexicons, mode=p.filter.mode)
        self.cache: AnswerCache
        if p.redis_url:
            self.cache = RedisCache(p.redis_url, ttl_s=p.cache.ttl_s, on_error=self._cache_failed)
            if not self.cache.ping():
                log.warning(
                    "redis at %s is not answering at start-up: serving without a cache until it is",
                    p.redis_url,
                )
        else:
            self.cache = LRUCache(max_entries=p.cache.max_entries, ttl_s=p.cache.ttl_s)
        self.sessions = open_store(p.database_url)
        self._pumps = ThreadPoolExecutor(max_workers=32, thread_name_prefix="chatforge-upstream")
        privacy = p.privacy
        self.mask = pii_masker(privacy)
        purged = purge_expired(self.sessions, retention_days=privacy.retention_days)
        if purged:
            log.info("deleted %d conversations older than %g days (serve.privacy.retention_days)",
                     purged, privacy.retention_days)
        self.keys = KeyRing(read_keys(config.api_keys_file)) if config.api_keys_file else None
        self.limiter = KeyRateLimiter(
            per_minute=p.rate_limit.requests_per_minute,
            burst=p.rate_limit.burst,
            redis_url=p.redis_url,
            on_error=lambda: self.metrics.errors.labels(type="rate_limit_store").inc(),
        )
        log.info(
            "serving variants %s; cache %s; rate limit %s; store %s (PII %s, retention %s); "
            "filter %d terms (%s); auth %s",
            ", ".join(f"{n} ({self.backends[n].family})" for n, _ in self.weights),
            self.cache.kind,
            self.limiter.kind,
            p.database_url.split("@")[-1],
            "masked" if self.mask else "kept",
            f"{privacy.retention_days:g} days" if privacy.retention_days else "forever",
            self.filter.size,
            p.filter.mode,
            "on" if config.require_auth else "OFF",
        )

    def _open(self, variant: ServeVariant) -> ModelBackend:
        p = self.params
        if variant.upstream is not None:
            from chatforge.serving.upstream import UpstreamBackend

            return UpstreamBackend(variant.upstream, confidence_tokens=p.confidence_tokens, variant=variant.name)
        assert variant.model is not None  # ServeVariant has exactly one of model / upstream
        return open_backend(variant.model, backend=variant.backend, max_batch_size=p.batch.max_batch_size,
                            max_wait_ms=p.batch.max_wait_ms, providers=self.config.providers, hybrid=p.hybrid)

    def _cache_failed(self, op: str) -> None:
        self.metrics.cache_errors.labels(op=op).inc()
        self.metrics.cache_up.set(0)

    # -- request checks
    def authenticate(self, headers: Mapping[str, str]) -> str | None:
        """The API key's id from `Authorization: Bearer <key>` (lower-case header names), after the
        per-key rate limit; None without auth. Raises APIError 401 / 429."""
        if not self.config.require_auth:
            return None
        header = headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise APIError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>' "
                "(create a key with `chatforge keys add NAME`)",
                code="missing_api_key",
            )
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(
                401, "malformed Authorization header: expected 'Bearer <key>'", code="invalid_api_key"
            )
        record = self.keys.lookup(key.strip()) if self.keys else None
        if record is None:
            raise APIError(
                401, "invalid API key: it is not in this server's keys file", code="invalid_api_key"
            )
        wait_s = self.limiter.acquire(record.id)
        if wait_s > 0:
            rl = self.params.rate_limit
            raise APIError(
                429,
                f"rate limit exceeded for this API key ({rl.requests_per_minute:g} requests per minute, "
                f"burst {rl.burst}); retry in {wait_s:.1f} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait_s + 0.5)))},
            )
        return record.id

    def model_names(self) -> list[str]:
        return [BASE_MODEL, *(f"{BASE_MODEL}:{p}" for p in self.params.personas), *self.backends]

    def resolve(self, req: ChatCompletionRequest) -> tuple[str | None, str | None]:
        """(pinned variant or None for A/B, persona) from the model name and the persona field."""
        base, _, suffix = req.model.partition(":")
        if base != BASE_MODEL and base not in self.backends:
            raise APIError(
                404,
                f"model {req.model!r} not found; available models: {', '.join(self.model_names())}",
                code="model_not_found",
                param="model",
            )
        if suffix and req.persona and suffix != req.persona:
            raise APIError(
                400,
                f"persona given twice and differently: model suffix {suffix!r}, persona {req.persona!r}",
                param="persona",
            )
        persona = suffix or req.persona
        if persona is not None and persona not in self.params.personas:
            valid = ", ".join(self.params.personas) or "(none configured in serve.personas)"
            raise APIError(
                400,
                f"unknown persona {persona!r}; valid personas: {valid}",
                code="unknown_persona",
                param="persona",
            )
        return (base if base != BASE_MODEL else None), persona

    @staticmethod
    def check_supported(req: ChatCompletionRequest) -> None:
        """Refuse, naming the field, what this model cannot do; a client never gets a quiet default."""
        for i, m in enumerate(req.messages):
            if m.role in ("tool", "function"):
                raise APIError(
                    400,
                    f"messages.{i}.role = {m.role!r}: tool results are not supported by this model (it "
                    "cannot call tools); send the conversation without tool calls and their results",
                    code=UNSUPPORTED,
                    param=f"messages.{i}.role",
                )
            for name in ("tool_calls", "function_call"):
                if getattr(m, name):
                    raise APIError(
                        400,
                        f"messages.{i}.{name}: tool calls are not supported by this model; send the "
                        "conversation without them",
                        code=UNSUPPORTED,
                        param=f"messages.{i}.{name}",
                    )
            if m.content is None:
                raise APIError(400, f"messages.{i}.content: required for role {m.role!r}",
                               code="missing_required_parameter", param=f"messages.{i}.content")
        if req.tools:
            raise APIError(400, "tools are not supported by this model (it cannot call functions); "
                           "omit `tools`", code=UNSUPPORTED, param="tools")
        choice = req.tool_choice
        if choice is not None and choice not in ("none", "auto"):
            shown = choice if isinstance(choice, str) else "a named function"
            raise APIError(400, f"tool_choice {shown!r} is not supported by this model (it cannot call "
                           "tools); omit tool_choice or send 'none'", code=UNSUPPORTED, param="tool_choice")
        fmt = req.response_format
        if fmt is not None and fmt.get("type", "text") != "text":
            kind = str(fmt.get("type"))[:40]
            raise APIError(
                400,
                f"response_format type {kind!r} is not supported by this model (no constrained JSON "
                "decoding); omit response_format or send {'type': 'text'}",
                code=UNSUPPORTED,
                param="response_format",
            )
        for name, reason in unsupported_fields(req):
            raise APIError(400, f"{name}: {reason}", code=UNSUPPORTED, param=name)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", code="invalid_value",
                           param="top_logprobs")

    def check_bounds(self, req: ChatCompletionRequest) -> int:
        lim = self.params.limits
        if len(req.messages) > lim.max_messages:
            raise APIError(
                400,
                f"too many messages: {len(req.messages)} > {lim.max_messages} "
                "(serve.limits.max_messages); send a shorter history",
                param="messages",
            )
        chars = sum(len(m.text()) for m in req.messages)
        if chars > lim.max_chars:
            raise APIError(
                400,
                f"messages too long: {chars} characters > {lim.max_chars} (serve.limits.max_chars)",
                param="messages",
            )
        if not any(m.role == "user" for m in req.messages):
            raise APIError(
                400, "messages must contain at least one message with role 'user'", param="messages"
            )
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is not None and asked > lim.max_tokens:
            raise APIError(
                400,
                f"{field} = {asked} exceeds this server's limit of {lim.max_tokens} "
                "(serve.limits.max_tokens)",
                param=field,
            )
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
        return asked or lim.default_max_tokens

    @staticmethod
    def fit_context(backend: ModelBackend, messages: list[dict[str, str]], max_new_tokens: int, *,
                    asked: str | None) -> int:
        """The request's answer budget after its prompt is rendered and measured, before it joins a batch.

        A causal LM's prompt (chat template applied) plus its answer must fit the model's context
        (config.max_position_embeddings): beyond it the model has no trained positions and attention
        memory grows with the square of the length, so one long message could take the server's
        memory. A prompt with no room left, or an asked max_tokens beyond the room, is a 400 naming
        the sizes (OpenAI's `context_length_exceeded`; `asked` is the field the client used:
        max_tokens or max_completion_tokens); an unasked default is lowered to the room.
        A template that refuses the messages is a 400 naming `messages`. Classifiers (which
        truncate their input) and upstream APIs are not measured here."""
        measure = getattr(backend, "measure", None)
        if measure is None:
            return max_new_tokens
        try:
            prompt = int(measure(messages))
        except PromptError as exc:
            raise APIError(400, f"messages: this model's chat template refuses them ({exc}); send one system "
                                "message, first, and alternate user and assistant turns", param="messages") from None
        context = getattr(backend, "context_tokens", None)
        if not context:
            return max_new_tokens
        room = context - prompt
        if room < 1:
            raise APIError(400, f"messages: the prompt is {prompt} tokens after the chat template and this model's "
                                f"context is {context} tokens, which leaves no room for an answer; send a shorter "
                                "history or message", code="context_length_exceeded", param="messages")
        if max_new_tokens > room:
            if asked:
                raise APIError(400, f"{asked}: the prompt's {prompt} tokens plus {max_new_tokens} answer tokens "
                                    f"exceed this model's context of {context} tokens; ask for at most {room} or send "
                                    "a shorter history", code="context_length_exceeded", param=asked)
            return room
        return max_new_tokens

    def _shown(self, backend: ModelBackend, text: str, max_tokens: int, finish: str) -> tuple[str, int, str]:
        """A text the service shows instead of the model's (fallback, blocked message), cut to the
        request's max_tokens: (text, its tokens, finish_reason) so usage counts what was received."""
        ids = backend.token_ids(text)
        if len(ids) <= max_tokens:
            return text, len(ids), finish
        return backend.detokenize(ids[:max_tokens]), max_tokens, "length" if finish == "stop" else finish

    # -- the answer
    def prepare(self, req: ChatCompletionRequest, key_id: str | None) -> Turn:
        """Every check that can refuse a request (raises APIError), the variant, the messages after
        the input filter and persona, the generation config and the cache key: all before any output."""
        started = time.perf_counter()
        self.check_supported(req)
        max_new_tokens = self.check_bounds(req)
        pinned, persona_name = self.resolve(req)
        p = self.params
        user = req.user or key_id or uuid.uuid4().hex
        variant = pinned or assign_variant(user, self.weights, salt=p.ab_salt)
        backend = self.backends[variant]
        if req.logprobs and backend.family != "causal_lm":
            raise APIError(
                400,
                f"logprobs are not available from variant {variant!r}: it is an intent classifier that "
                "answers with canned text; omit logprobs or pin a causal LM variant",
                code=UNSUPPORTED,
                param="logprobs",
            )
        # `developer` is what current OpenAI clients send for instructions: the system role here
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
        ]
        last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        lang = detect_lang(last_user)

        # every message the client sends is screened (system and earlier assistant turns too): all of
        # it reaches the model and the store, and a stored history is what feedback export writes
        input_action, terms = "none", set()
        for m in messages:
            result = self.filter.apply(m["content"])
            if result.action != "none":
                terms.update(result.terms)
                m["content"] = result.text
                input_action = "blocked" if "blocked" in (input_action, result.action) else result.action
        if input_action != "none":
            self.metrics.filter_actions.labels(stage="input", action=input_action).inc()

        persona = p.personas.get(persona_name) if persona_name else None
        if persona and persona.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": persona.system_prompt})
        asked = ("max_completion_tokens" if req.max_completion_tokens is not None
                 else "max_tokens" if req.max_tokens is not None else None)
        max_new_tokens = self.fit_context(backend, messages, max_new_tokens, asked=asked)
        temperature = (
            req.temperature if req.temperature is not None else (persona.temperature if persona else 0.0)
        )
        top_p = req.top_p if req.top_p is not None else (persona.top_p if persona else 1.0)
        stops = tuple([req.stop] if isinstance(req.stop, str) else (req.stop or []))
        top_k = (req.top_logprobs or 0) if req.logprobs else 0
        gen = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_strings=stops,
            seed=req.seed,
            top_logprobs=top_k,
        )
        key = cache_key(
            fingerprint=backend.fingerprint,
            messages=messages,
            sampling={
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "stop": list(stops),
                "seed": req.seed,
                "lang": lang,
                "top_logprobs": top_k,
            },
            persona=persona_name,
            filter_version=self.filter.version,
        )
        return Turn(req=req, key_id=key_id, started=started, variant=variant, backend=backend,
                    persona=persona_name, messages=messages, lang=lang, input_action=input_action, terms=terms,
                    gen=gen, cache_key=key, cacheable=temperature == 0.0 or p.cache.cache_sampled)

    def _cached(self, t: Turn) -> Answer | None:
        if not t.cacheable:
            return None
        hit = self.cache.get(t.cache_key)
        if isinstance(self.cache, RedisCache):
            self.metrics.cache_up.set(1 if self.cache.available else 0)
        if hit is None:
            self.metrics.cache_misses.inc()
            return None
        self.metrics.cache_hits.inc()
        return Answer.from_json(hit)

    def confidence(self, answer: Answer) -> float:
        """The served confidence: metrics.answer_confidence over the first serve.confidence_tokens
        token log-probabilities (a classifier's, or a logprob-less upstream's, own confidence)."""
        if not answer.token_logprobs:
            return answer.confidence
        return answer_confidence(answer.token_logprobs, first=self.params.confidence_tokens)

    def complete(self, req: ChatCompletionRequest, key_id: str | None) -> Completion:
        return self.answer(self.prepare(req, key_id))

    def answer(self, t: Turn, *, hit: Answer | None = None) -> Completion:
        """The whole answer at once: cache (or the `hit` already looked up), model, output filter,
        confidence threshold, store."""
        p = self.params
        if t.input_action == "blocked":
            text, n, finish = self._shown(t.backend, p.filter.blocked_message[t.lang], t.gen.max_new_tokens,
                                          "content_filter")
            return self.record(t, text=text, completion_tokens=n, finish=finish, answer=None)
        answer = hit or self._cached(t)
        cached = answer is not None
        if answer is None:
            answer = t.backend.answer(t.messages, t.gen, lang=t.lang)
        out = self.filter.apply(answer.text)
        tokens = None
        fallback = False
        if out.action != "none":
            t.terms.update(out.terms)
            self.metrics.filter_actions.labels(stage="output", action=out.action).inc()
        if out.action == "blocked":
            text, n, finish = self._shown(t.backend, p.filter.blocked_message[t.lang], t.gen.max_new_tokens,
                                          "content_filter")
        elif (replaced := self.replaced(t, answer)) is not None:
            text, n, finish, fallback = replaced
        else:
            text, n, finish = out.text, answer.completion_tokens, answer.finish_reason
            tokens = answer.tokens() if out.action == "none" else None
        # blocked answers are never cached; a fallback is (the threshold is applied again on a hit)
        if t.cacheable and not cached and out.action != "blocked":
            self.cache.set(t.cache_key, answer.to_json())
        return self.record(t, text=text, completion_tokens=n, finish=finish, answer=answer, cached=cached,
                           fallback=fallback, output_action=out.action, tokens=tokens)

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
                    judged = self.confidence(future.result()) if done else answer_confidence(
                        logprobs, first=p.confidence_tokens)
                    if judged < p.confidence_threshold:
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


def create_app(config: ServeConfig, *, backends: dict[str, ModelBackend] | None = None) -> FastAPI:
    """Build the service; `backends` (variant name -> backend) lets tests share loaded models."""
    service = ChatService(config, backends)
    _redact_access_log()
    # the schema is served below behind the API key like every route but /healthz (and the page shell)
    app = FastAPI(
        title="chatforge",
        version="1",
        description="OpenAI-compatible chat service for models chatforge built.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    metrics = service.metrics
    limits = service.params.limits
    app.add_middleware(
        RequestGuard,
        authenticate=service.authenticate,
        metrics=metrics,
        routes=app.router.routes,
        max_body_bytes=limits.max_body_bytes,
        max_header_bytes=limits.max_header_bytes,
    )

    def error_response(
        status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.errors.labels(type=body["error"]["type"]).inc()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for e in exc.errors()[:5]:
            if e.get("type") == "json_invalid":  # the guard answers these first; kept for safety
                problems.append("the request body is not valid JSON")
                continue
            loc = tuple(e.get("loc", ()))
            where = public_param(loc)
            if e.get("type") == "extra_forbidden" and loc:  # the unknown field itself, as the client named it
                name = shown_field(str(loc[-1]))
                where = f"{public_param(loc[:-1])}.{name}" if public_param(loc[:-1]) else name
            param = param or where
            if e.get("type") == "missing":
                problems.append(f"{where}: required field is missing")
            elif e.get("type") == "extra_forbidden":
                problems.append(f"{where}: unknown field")
            else:
                problems.append(f"{where or 'body'}: {e.get('msg', 'invalid value')}")
        return error_response(
            400,
            error_body("invalid request: " + "; ".join(problems), "invalid_request_error", "invalid_value", param),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {
            404: "not found: GET /openapi.json lists the routes",
            405: "method not allowed on this route",
        }.get(exc.status_code, str(exc.detail))
        # a 405 names the methods the route has (Starlette passes them as the Allow header)
        return error_response(exc.status_code, error_body(message, "invalid_request_error", str(exc.status_code)),
                              dict(exc.headers or {}))

    def authorised(request: Request) -> str | None:
        # the guard checked the key (and the rate limit) before the body was read
        return request.scope.get("state", {}).get("key_id")

    @app.api_route("/healthz", tags=["ops"], methods=["GET", "HEAD"])
    def healthz() -> dict[str, Any]:
        """Liveness and what this instance serves; the only route without an API key."""
        cache_up = service.cache.available if isinstance(service.cache, RedisCache) else True
        return {
            "status": "ok",
            "variants": [n for n, _ in service.weights],
            "cache": service.cache.kind,
            "cache_up": cache_up,
        }

    @app.api_route("/metrics", tags=["ops"], methods=["GET", "HEAD"])
    def prometheus(_: str | None = Depends(authorised)) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "chatforge"}

    @app.api_route("/v1/models", tags=["openai"], methods=["GET", "HEAD"])
    def models(_: str | None = Depends(authorised)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [model_object(name) for name in service.model_names()],
            "personas": {name: persona.model_dump() for name, persona in service.params.personas.items()},
        }

    @app.api_route("/v1/models/{model_id:path}", tags=["openai"], methods=["GET", "HEAD"])
    def model(model_id: str, _: str | None = Depends(authorised)) -> dict[str, Any]:
        if model_id not in service.model_names():
            raise APIError(
                404,
                f"model {model_id[:256]!r} not found; available models: {', '.join(service.model_names())}",
                code="model_not_found",
                param="model",
            )
        return model_object(model_id)

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None)
    def chat_completions(req: ChatCompletionRequest, key_id: str | None = Depends(authorised)) -> Response:
        turn = service.prepare(req, key_id)  # every refusal happens here, before a stream starts
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stop = threading.Event()
            return StreamingResponse(
                _relay(service.stream(turn, include_usage, stop), stop),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return JSONResponse(service.answer(turn).body())

    @app.post("/v1/feedback", tags=["chatforge"])
    def feedback(req: FeedbackRequest, key_id: str | None = Depends(authorised)) -> dict[str, Any]:
        """Rate an answer (1 / -1 / 0) by its completion id, optionally with the answer you wanted.
        Only the API key that created the completion may rate it; a correction is checked by the
        sensitive-word filter and exported for training only after review."""
        return service.feedback(req, key_id)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_schema(_: str | None = Depends(authorised)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.api_route("/", include_in_schema=False, methods=["GET", "HEAD"])
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _relay(events: Iterator[str], stop: threading.Event) -> AsyncIterator[str]:
    """Server-sent events from the decoding side, one thread hop per event. When the client goes
    away Starlette cancels this generator at once (the thread call is abandoned, not awaited), and
    `stop` tells the decoder to drop the request at its next token."""
    try:
        while (event := await anyio.to_thread.run_sync(next, events, None, abandon_on_cancel=True)) is not None:
            yield event
    finally:
        if not stop.is_set():
            stop.set()
            # the stream's own end (recording what was sent) runs on a thread nobody waits for
            threading.Thread(target=_finish, args=(events,), name="chatforge-abandoned", daemon=True).start()


def _finish(events: Iterator[str]) -> None:
    """Run an abandoned stream to its end (decoding stops at its next token, then it records what
    was sent). The abandoned `next` may still be running inside it: wait for it to leave."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            next(events)
        except StopIteration:
            return
        except ValueError as exc:  # "generator already executing": the abandoned call is inside it
            if "already executing" not in str(exc):
                log.exception("an abandoned stream failed to finish")
                return
            time.sleep(0.01)
        except Exception:
            log.exception("an abandoned stream failed to finish")
            return


def app_from_env() -> FastAPI:
    """uvicorn factory for `--workers N`: each worker process rebuilds the app from the environment."""
    from chatforge.io import setup_logging
    from chatforge.serving.config import config_from_env

    setup_logging("serve")
    return create_app(config_from_env())


__all__ = ["APIError", "ChatCompletionRequest", "ChatService", "create_app", "detect_lang"]
