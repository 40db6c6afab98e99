"""The OpenAI-compatible chat service: `create_app(config)` builds one FastAPI app.

A request goes: (guard: header size, API key and rate limit, body size, valid JSON and Unicode)
-> screen input (serving/screen.py: bounds, unsupported features, input filter) -> settings
(serving/settings.py: persona and variant, A/B by user hash, generation config) -> cache
(serving/cache.py) -> decode (the model; serving/decode.py when streaming) -> judge (output
filter, then serving/judge.py: answer or fall back, chatforge.runtime.fallback) -> record
(serving/record.py: store, PII masked) -> response. `ChatService` holds what one app instance
needs and composes the steps. Every error leaves in the OpenAI error shape {"error": {"message",
"type", "code", "param"}} with a message saying what to change and `param` naming the public
field; no stack trace ever reaches a client.

A stream never shows text that is then withdrawn: the confidence rule decides on the first
serve.confidence_tokens tokens before any text is sent, and text the output filter could still
claim is held back (serving/decode.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.data.lang import detect_lang
from chatforge.params import ServeVariant
from chatforge.runtime.backends import ModelBackend
from chatforge.runtime.quality import Answer
from chatforge.serving.auth import KeyRing, read_keys
from chatforge.serving.backends import open_backend
from chatforge.serving.cache import AnswerCache, CacheStep, LRUCache, RedisCache
from chatforge.serving.config import ServeConfig
from chatforge.serving.decode import DecodeStep
from chatforge.serving.errors import APIError, error_body
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.guard import RequestGuard
from chatforge.serving.judge import JudgeStep
from chatforge.serving.metrics import ServeMetrics
from chatforge.serving.privacy import pii_masker
from chatforge.serving.ratelimit import KeyRateLimiter
from chatforge.serving.record import RecordStep
from chatforge.serving.settings import SettingsStep, Turn
from chatforge.serving.store import open_store, purge_expired
from chatforge.serving.wire import ChatCompletionRequest, Completion, FeedbackRequest, public_param, shown_field

log = logging.getLogger("chatforge.serving")

STATIC = Path(__file__).parent / "static"


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


class ChatService(SettingsStep, CacheStep, DecodeStep, JudgeStep, RecordStep):
    """Everything one app instance holds (models, cache, store, filter, keys, limits, metrics) and
    the steps of a request, one module each: screen input (serving/screen.py) -> settings
    (serving/settings.py: `prepare`) -> cache (serving/cache.py) -> decode (serving/decode.py,
    streaming; `answer` here for the whole answer) -> judge (serving/judge.py: answer or fall back)
    -> record (serving/record.py: the completion, metrics, store; feedback)."""

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

    # -- the whole answer at once (a stream: DecodeStep.stream)
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
