"""The ASGI layer in front of every route: limits and the API key before any work, one error path.

For each HTTP request, in this order, before FastAPI parses anything:
1. request headers larger than `serve.limits.max_header_bytes` together -> 431;
2. on private routes (all but /healthz, the page and its static files), the API key and the
   per-key rate limit -> 401 / 429, so an unauthenticated request never has its body read;
3. a body larger than `serve.limits.max_body_bytes` -> 413, from Content-Length before reading,
   or while reading chunked bodies (at most the limit plus one chunk is ever held);
4. a JSON body that is not valid UTF-8 / JSON -> 400 (line and column, no field), one holding a
   lone surrogate escape ("\\ud83d", half an emoji) anywhere -> 400 naming the field.

It also counts every response (5xx and the refusals above included) in
`chatforge_requests_total` and the latency histogram, turns an unhandled exception into a 500
in the OpenAI shape logged once with a reference, and adds the security headers below to every
response. Errors leave in the OpenAI shape (chatforge.serving.errors).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatforge.serving.errors import APIError
from chatforge.serving.metrics import ServeMetrics

log = logging.getLogger("chatforge.serving")

PUBLIC_PATHS = frozenset({"/", "/healthz", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
# the page loads only its own script, style and API; nothing may frame it
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
JSON_TYPES = ("application/json", "text/json")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def find_lone_surrogate(value: Any, path: tuple[str, ...] = ()) -> str | None:
    """The dotted path (`messages.0.content`) of the first string, key or value, holding a lone
    UTF-16 surrogate (U+D800-U+DFFF), which no UTF-8 text can carry; None when there is none."""
    if isinstance(value, str):
        return ".".join(path) or "body" if any("\ud800" <= c <= "\udfff" for c in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if any("\ud800" <= c <= "\udfff" for c in key):
                return ".".join(path) or "body"
            if (found := find_lone_surrogate(item, (*path, key))) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := find_lone_surrogate(item, (*path, str(i)))) is not None:
                return found
    return None


class _TooLarge(Exception):
    pass


class RequestGuard:
    """Pure ASGI middleware (see the module docstring). `authenticate(headers) -> key id or None`
    raises APIError; `routes` is the app's route list, used to label refused requests in metrics."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Callable[[Mapping[str, str]], str | None],
        metrics: ServeMetrics,
        routes: Sequence[BaseRoute],
        max_body_bytes: int,
        max_header_bytes: int,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.metrics = metrics
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", "other"))
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                return str(getattr(candidate, "path", "other"))
        return "other"

    async def _refuse(self, scope: Scope, send: Send, exc: APIError) -> None:
        self.metrics.errors.labels(type=exc.type).inc()
        response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        await response(scope, _no_body, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self._handle(scope, receive, send_with_headers)
        except APIError as exc:
            await self._refuse(scope, send_with_headers, exc)
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("unhandled error on %s %s (ref %s)", scope.get("method"), scope.get("path"), ref)
            if not state["started"]:
                await self._refuse(
                    scope,
                    send_with_headers,
                    APIError(
                        500,
                        f"internal error (ref {ref}); the server log has the details",
                        type="server_error",
                        code="internal_error",
                    ),
                )
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route=route, status=str(state["status"])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        header_bytes = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if header_bytes > self.max_header_bytes:
            raise APIError(
                431,
                f"request headers too large: {header_bytes} bytes > {self.max_header_bytes} "
                "(serve.limits.max_header_bytes); send fewer or shorter headers",
                code="request_header_fields_too_large",
            )
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if sum(k.lower() == b"authorization" for k, _ in scope["headers"]) > 1:
            # a proxy that reads the first header and this app would disagree about who is calling
            raise APIError(401, "send one Authorization header: this request has several",
                           code="invalid_api_key")
        if not is_public(scope["path"]):
            key_id = await run_in_threadpool(self.authenticate, headers)
            scope.setdefault("state", {})["key_id"] = key_id
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        body = await self._read_body(headers, receive)
        content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if body and content_type in JSON_TYPES:
            _check_json(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect can come

        await self.app(scope, replay, send)

    async def _read_body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        limit = self.max_body_bytes
        too_large = APIError(
            413,
            f"request body too large: more than {limit} bytes (serve.limits.max_body_bytes); "
            "send a shorter conversation",
            code="request_too_large",
        )
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise APIError(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _check_json(body: bytes) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(
            400,
            f"the request body is not valid UTF-8 (byte {exc.start}); send JSON encoded as UTF-8",
            code="invalid_json",
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(
            400,
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="invalid_json",
        ) from None
    path = find_lone_surrogate(value)
    if path is not None:
        raise APIError(
            400,
            f"{path}: invalid Unicode: a lone surrogate escape (half of a UTF-16 pair, e.g. a cut "
            "emoji); send complete characters",
            code="invalid_unicode",
            param=None if path == "body" else path,
        )


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


__all__ = ["SECURITY_HEADERS", "RequestGuard", "find_lone_surrogate", "is_public"]
