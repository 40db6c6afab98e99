"""The OpenAI-compatible chat service: `create_app(config)` builds one FastAPI app.

A request goes: API key and rate limit -> bounds -> persona and variant (A/B by user hash) ->
input filter -> cache -> model -> output filter -> confidence threshold -> store -> response.
Every error leaves in the OpenAI error shape {"error": {"message", "type", "code", "param"}}
with a message saying what to change; no stack trace ever reaches a client.

Streaming sends the answer as server-sent-event chunks only after the safety filter and the
confidence threshold have seen the whole answer (both need it), so a stream never shows text
that is then withdrawn.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.data.lang import detect_lang
from chatforge.modeling.generate import GenerationConfig
from chatforge.serving.ab import assign_variant
from chatforge.serving.auth import KeyRing, RateLimiter, read_keys
from chatforge.serving.backends import Answer, ModelBackend, open_backend
from chatforge.serving.cache import AnswerCache, LRUCache, RedisCache, cache_key
from chatforge.serving.config import ServeConfig
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.metrics import ServeMetrics
from chatforge.serving.store import open_store, record_conversation, record_feedback

log = logging.getLogger("chatforge.serving")

STATIC = Path(__file__).parent / "static"
BASE_MODEL = "chatforge"  # the A/B-routed model name; a variant name pins that variant


# ------------------------------------------------------------------------------------- errors
class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}


def _error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


# ---------------------------------------------------------------------------- request shapes
class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # OpenAI clients send fields this server does not use (presence_penalty, logit_bias, ...): ignored
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256, examples=["chatforge"])
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int | None = Field(default=None, ge=1, le=1)  # one choice per request
    user: str | None = Field(default=None, max_length=256)  # sticky A/B assignment key
    persona: str | None = Field(default=None, max_length=128)  # or "chatforge:<persona>" as model


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1, max_length=64)  # the `id` of the chat completion
    rating: int = Field(ge=-1, le=1)  # 1 thumbs up, -1 thumbs down, 0 neutral
    correction: str | None = Field(default=None, min_length=1, max_length=8000)  # the answer wanted instead
    comment: str | None = Field(default=None, max_length=2000)


# ------------------------------------------------------------------------------------ helpers
def _chunks(text: str) -> list[str]:
    # one chunk per word (with its trailing space) or per CJK character, like token streaming looks
    return re.findall(r"\s*[\u3400-\u9fff\uf900-\ufaff]|\s*[^\s\u3400-\u9fff\uf900-\ufaff]+|\s+$", text) or [
        text
    ]


@dataclass
class Completion:
    id: str
    created: int
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    variant: str
    persona: str | None
    confidence: float | None
    fallback: bool
    cached: bool
    filter_action: str

    def extra(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "persona": self.persona,
            "confidence": self.confidence,
            "fallback": self.fallback,
            "cached": self.cached,
            "filter": self.filter_action,
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self.usage(),
            "chatforge": self.extra(),
        }

    def sse(self, include_usage: bool) -> Iterator[str]:
        head = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

        def event(choices: list[dict[str, Any]], **more: Any) -> str:
            return f"data: {json.dumps(head | {'choices': choices} | more, ensure_ascii=False)}\n\n"

        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for piece in _chunks(self.text) if self.text else []:
            yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": self.finish_reason}], chatforge=self.extra())
        if include_usage:
            yield event([], usage=self.usage())
        yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------------------- app
class ChatService:
    """Everything one app instance holds: models, cache, store, filter, keys, metrics."""

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
        self.keys = KeyRing(read_keys(config.api_keys_file)) if config.api_keys_file else None
        self.limiter = RateLimiter(per_minute=p.rate_limit.requests_per_minute, burst=p.rate_limit.burst)
        log.info(
            "serving variants %s; cache %s; store %s; filter %d terms (%s); auth %s",
            ", ".join(f"{n} ({self.backends[n].family})" for n, _ in self.weights),
            self.cache.kind,
            p.database_url.split("@")[-1],
            self.filter.size,
            p.filter.mode,
            "on" if config.require_auth else "OFF",
        )

    def _cache_failed(self, op: str) -> None:
        self.metrics.cache_errors.labels(op=op).inc()
        self.metrics.cache_up.set(0)

    # -- request checks
    def authenticate(self, request: Request) -> str | None:
        if not self.config.require_auth:
            return None
        header = request.headers.get("authorization", "")
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
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > lim.max_tokens:
            raise APIError(
                400,
                f"max_tokens = {asked} exceeds this server's limit of {lim.max_tokens} "
                "(serve.limits.max_tokens)",
                param="max_tokens",
            )
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
        return asked or lim.default_max_tokens

    # -- the answer
    def complete(self, req: ChatCompletionRequest, key_id: str | None) -> Completion:
        started = time.perf_counter()
        max_new_tokens = self.check_bounds(req)
        pinned, persona_name = self.resolve(req)
        p = self.params
        user = req.user or key_id or uuid.uuid4().hex
        variant = pinned or assign_variant(user, self.weights, salt=p.ab_salt)
        backend = self.backends[variant]
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
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
        gen = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_strings=stops,
            seed=req.seed,
        )

        answer: Answer | None = None
        cached = False
        output_action = "none"
        fallback = False
        if input_action == "blocked":
            text, finish = p.filter.blocked_message[lang], "content_filter"
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
                text, finish = p.filter.blocked_message[lang], "content_filter"
            elif answer.confidence < p.confidence_threshold:
                text, finish, fallback = p.fallback[lang], "stop", True
                self.metrics.fallbacks.labels(variant=variant).inc()
            else:
                text, finish = out.text, answer.finish_reason
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
            completion_tokens=answer.completion_tokens if answer else 0,
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
        )
        self.metrics.variant_requests.labels(variant=variant).inc()
        self.metrics.tokens.labels(kind="prompt", variant=variant).inc(completion.prompt_tokens)
        self.metrics.tokens.labels(kind="completion", variant=variant).inc(completion.completion_tokens)
        try:
            record_conversation(
                self.sessions,
                messages=[m for m in messages],
                answer=text,
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


def create_app(config: ServeConfig, *, backends: dict[str, ModelBackend] | None = None) -> FastAPI:
    """Build the service; `backends` (variant name -> backend) lets tests share loaded models."""
    service = ChatService(config, backends)
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

    def error_response(
        status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.errors.labels(type=body["error"]["type"]).inc()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(
            exc.status, _error_body(exc.message, exc.type, exc.code, exc.param), exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for e in exc.errors()[:5]:
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            param = param or ".".join(loc) or None
            if e.get("type") == "json_invalid":
                problems.append("the request body is not valid JSON")
            elif e.get("type") == "missing":
                problems.append(f"{'.'.join(loc)}: required field is missing")
            elif e.get("type") == "extra_forbidden":
                problems.append(f"{'.'.join(loc)}: unknown field")
            else:
                problems.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid value')}")
        return error_response(
            400,
            _error_body(
                "invalid request: " + "; ".join(problems), "invalid_request_error", "invalid_value", param
            ),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {
            404: "not found: GET /openapi.json lists the routes",
            405: "method not allowed on this route",
        }.get(exc.status_code, str(exc.detail))
        return error_response(
            exc.status_code, _error_body(message, "invalid_request_error", str(exc.status_code))
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error on %s %s (ref %s)", request.method, request.url.path, ref)
        return error_response(
            500,
            _error_body(
                f"internal error (ref {ref}); the server log has the details",
                "server_error",
                "internal_error",
            ),
        )

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        metrics.requests.labels(route=path, status=str(response.status_code)).inc()
        metrics.latency.labels(route=path).observe(time.perf_counter() - started)
        return response

    def authorised(request: Request) -> str | None:
        return service.authenticate(request)

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

    @app.get("/v1/models", tags=["openai"])
    def models(_: str | None = Depends(authorised)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "chatforge"}
                for name in service.model_names()
            ],
            "personas": {name: persona.model_dump() for name, persona in service.params.personas.items()},
        }

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
        """Rate an answer (1 / -1 / 0) by its completion id, optionally with the answer you wanted."""
        row = record_feedback(
            service.sessions,
            conversation_id=req.completion_id,
            rating=req.rating,
            correction=req.correction,
            comment=req.comment,
            api_key_id=key_id,
        )
        if row is None:
            raise APIError(
                404,
                f"completion {req.completion_id!r} not found: send the `id` of a chat completion "
                "this service returned",
                code="completion_not_found",
                param="completion_id",
            )
        return {"object": "feedback", "id": row, "completion_id": req.completion_id, "rating": req.rating}

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
