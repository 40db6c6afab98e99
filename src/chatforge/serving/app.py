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
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.data.lang import detect_lang
from chatforge.modeling.generate import GenerationConfig
from chatforge.serving.ab import assign_variant
from chatforge.serving.auth import KeyRing, read_keys
from chatforge.serving.backends import Answer, ModelBackend, open_backend
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
from chatforge.serving.wire import ChatCompletionRequest, Completion, FeedbackRequest, public_param

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


# --------------------------------------------------------------------------------------- app
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
        self.backends = backends or {v.name: open_backend(v.model, backend=v.backend) for v in p.variants}
        missing = [v.name for v in p.variants if v.name not in self.backends]
        if missing:
            raise ValueError(f"no backend for variants {missing}")
        self.weights = [(v.name, v.weight) for v in p.variants]
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

    def _shown(self, backend: ModelBackend, text: str, max_tokens: int, finish: str) -> tuple[str, int, str]:
        """A text the service shows instead of the model's (fallback, blocked message), cut to the
        request's max_tokens: (text, its tokens, finish_reason) so usage counts what was received."""
        ids = backend.token_ids(text)
        if len(ids) <= max_tokens:
            return text, len(ids), finish
        return backend.detokenize(ids[:max_tokens]), max_tokens, "length" if finish == "stop" else finish

    # -- the answer
    def complete(self, req: ChatCompletionRequest, key_id: str | None) -> Completion:
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

        input_action, terms = "none", set()
        for m in messages:
            if m["role"] == "user":
                result = self.filter.apply(m["content"])
                if result.action != "none":
                    terms.update(result.terms)
                    m["content"] = result.text
                    input_action = result.action
        if input_action != "none":
            self.metrics.filter_actions.labels(stage="input", action=input_action).inc()

        persona = p.personas.get(persona_name) if persona_name else None
        if persona and persona.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": persona.system_prompt})
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

        answer: Answer | None = None
        cached = False
        output_action = "none"
        fallback = False
        tokens = None
        if input_action == "blocked":
            text, completion_tokens, finish = self._shown(
                backend, p.filter.blocked_message[lang], max_new_tokens, "content_filter"
            )
        else:
            cacheable = temperature == 0.0 or p.cache.cache_sampled
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
            if cacheable:
                hit = self.cache.get(key)
                if isinstance(self.cache, RedisCache):
                    self.metrics.cache_up.set(1 if self.cache.available else 0)
                if hit is not None:
                    answer, cached = Answer.from_json(hit), True
                    self.metrics.cache_hits.inc()
                else:
                    self.metrics.cache_misses.inc()
            if answer is None:
                answer = backend.answer(messages, gen, lang=lang)
            out = self.filter.apply(answer.text)
            output_action = out.action
            terms.update(out.terms)
            if out.action != "none":
                self.metrics.filter_actions.labels(stage="output", action=out.action).inc()
            if out.action == "blocked":
                text, completion_tokens, finish = self._shown(
                    backend, p.filter.blocked_message[lang], max_new_tokens, "content_filter"
                )
            elif answer.confidence < p.confidence_threshold:
                text, completion_tokens, finish = self._shown(backend, p.fallback[lang], max_new_tokens, "stop")
                fallback = True
                self.metrics.fallbacks.labels(variant=variant).inc()
            else:
                text, completion_tokens, finish = out.text, answer.completion_tokens, answer.finish_reason
                tokens = answer.tokens() if out.action == "none" else None
            # blocked answers are never cached; a fallback is (the threshold is applied again on a hit)
            if cacheable and not cached and out.action != "blocked":
                self.cache.set(key, answer.to_json())

        completion = Completion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=req.model,
            text=text,
            finish_reason=finish,
            prompt_tokens=answer.prompt_tokens if answer else 0,
            completion_tokens=completion_tokens,
            variant=variant,
            persona=persona_name,
            confidence=answer.confidence if answer else None,
            fallback=fallback,
            cached=cached,
            filter_action="blocked"
            if "blocked" in (input_action, output_action)
            else "masked"
            if "masked" in (input_action, output_action)
            else "none",
            want_logprobs=bool(req.logprobs),
            tokens=tokens,
        )
        self.metrics.variant_requests.labels(variant=variant).inc()
        self.metrics.tokens.labels(kind="prompt", variant=variant).inc(completion.prompt_tokens)
        self.metrics.tokens.labels(kind="completion", variant=variant).inc(completion.completion_tokens)
        try:
            record_conversation(
                self.sessions,
                messages=messages,
                answer=text,
                mask=self.mask,
                id=completion.id,
                user=req.user,
                api_key_id=key_id,
                variant=variant,
                model_fingerprint=backend.fingerprint,
                persona=persona_name,
                lang=lang,
                intent=answer.intent if answer else None,
                latency_ms=(time.perf_counter() - started) * 1000,
                confidence=completion.confidence,
                fallback=fallback,
                input_filter=input_action,
                output_filter=output_action,
                filter_terms=",".join(sorted(terms)) or None,
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
            where = public_param(tuple(e.get("loc", ())))
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
        return error_response(exc.status_code, error_body(message, "invalid_request_error", str(exc.status_code)))

    def authorised(request: Request) -> str | None:
        # the guard checked the key (and the rate limit) before the body was read
        return request.scope.get("state", {}).get("key_id")

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        """Liveness and what this instance serves; the only route without an API key."""
        cache_up = service.cache.available if isinstance(service.cache, RedisCache) else True
        return {
            "status": "ok",
            "variants": [n for n, _ in service.weights],
            "cache": service.cache.kind,
            "cache_up": cache_up,
        }

    @app.get("/metrics", tags=["ops"])
    def prometheus(_: str | None = Depends(authorised)) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "chatforge"}

    @app.get("/v1/models", tags=["openai"])
    def models(_: str | None = Depends(authorised)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [model_object(name) for name in service.model_names()],
            "personas": {name: persona.model_dump() for name, persona in service.params.personas.items()},
        }

    @app.get("/v1/models/{model_id:path}", tags=["openai"])
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
        completion = service.complete(req, key_id)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                completion.sse(include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return JSONResponse(completion.body())

    @app.post("/v1/feedback", tags=["chatforge"])
    def feedback(req: FeedbackRequest, key_id: str | None = Depends(authorised)) -> dict[str, Any]:
        """Rate an answer (1 / -1 / 0) by its completion id, optionally with the answer you wanted.
        Only the API key that created the completion may rate it; a correction is checked by the
        sensitive-word filter and exported for training only after review."""
        return service.feedback(req, key_id)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_schema(_: str | None = Depends(authorised)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for `--workers N`: each worker process rebuilds the app from the environment."""
    from chatforge.io import setup_logging
    from chatforge.serving.config import config_from_env

    setup_logging("serve")
    return create_app(config_from_env())


__all__ = ["APIError", "ChatCompletionRequest", "ChatService", "create_app", "detect_lang"]
