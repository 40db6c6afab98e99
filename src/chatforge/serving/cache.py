"""Answer cache: Redis shared by every instance when configured, an in-process LRU otherwise.

The cache stores the model's raw generation (text, confidence, finish reason, token counts); the
output filter and the confidence threshold run again on every hit, so changing either never
serves a stale decision. When Redis stops answering the service goes on without a cache: each
failure is logged and counted, and Redis is retried after a short pause rather than on every
request (a dead Redis must not add a connect timeout to each answer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from chatforge.runtime.quality import Answer
    from chatforge.serving.settings import Turn

log = logging.getLogger("chatforge.serving.cache")


def cache_key(
    *,
    fingerprint: str,
    messages: list[dict[str, str]],
    sampling: dict[str, Any],
    persona: str | None,
    filter_version: str,
) -> str:
    payload = json.dumps(
        {"f": fingerprint, "m": messages, "s": sampling, "p": persona, "v": filter_version},
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return "chatforge:answer:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache(Protocol):
    kind: str

    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any]) -> None: ...


class LRUCache:
    """Thread-safe in-process LRU with a TTL per entry."""

    kind = "memory"

    def __init__(
        self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            expires, value = item
            if self._clock() >= expires:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = (self._clock() + self.ttl_s, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class RedisCache:
    """Redis with a TTL (SET ... EX); any Redis error degrades to a miss and is reported through `on_error`."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int,
        retry_after_s: float = 5.0,
        timeout_s: float = 0.5,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors = (redis.RedisError, OSError)
        self.url = url
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._on_error = on_error
        self._clock = clock
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self, op: str, exc: Exception) -> None:
        with self._lock:
            first = self.available
            self._down_until = self._clock() + self.retry_after_s
        if first:
            log.warning(
                "redis %s failed (%s: %s): answering without the cache, retrying in %.0f s",
                op,
                type(exc).__name__,
                exc,
                self.retry_after_s,
            )
        if self._on_error:
            self._on_error(op)

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except self._errors as exc:
            self._failed("ping", exc)
            return False

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.available:
            return None
        try:
            raw = self._redis.get(key)
        except self._errors as exc:
            self._failed("get", exc)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            log.warning("redis key %s holds something that is not JSON; ignoring it", key)
            return None

    def set(self, key: str, value: dict[str, Any]) -> None:
        if not self.available:
            return
        try:
            self._redis.set(key, json.dumps(value, ensure_ascii=False), ex=self.ttl_s)
        except self._errors as exc:
            self._failed("set", exc)


__all__ = ["AnswerCache", "CacheStep", "LRUCache", "RedisCache", "cache_key"]


class CacheStep:
    """Step 3 of a chat request, the answer cache, for ChatService: a hit skips the model (the
    judge still runs on it); Redis errors are counted and the service answers without a cache."""

    cache: AnswerCache
    metrics: Any  # chatforge.serving.metrics.ServeMetrics

    def _cache_failed(self, op: str) -> None:
        self.metrics.cache_errors.labels(op=op).inc()
        self.metrics.cache_up.set(0)

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
        from chatforge.runtime.quality import Answer

        return Answer.from_json(hit)
