"""Cache keys, the in-process LRU, and Redis failure handling (no Redis needed here)."""

from __future__ import annotations

import socket

from chatforge.serving.cache import LRUCache, RedisCache, cache_key

BASE = {
    "fingerprint": "torch:abc",
    "messages": [{"role": "user", "content": "hi"}],
    "sampling": {"temperature": 0.0, "max_new_tokens": 8},
    "persona": None,
    "filter_version": "v1",
}


def test_key_changes_with_every_part_and_only_then():
    key = cache_key(**BASE)
    assert key == cache_key(**dict(BASE, sampling={"max_new_tokens": 8, "temperature": 0.0}))  # order-free
    for change in (
        {"fingerprint": "torch:abd"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"sampling": {"temperature": 0.0, "max_new_tokens": 9}},
        {"persona": "friendly"},
        {"filter_version": "v2"},
    ):
        assert cache_key(**(BASE | change)) != key, change


def test_lru_evicts_least_recent_and_expires():
    now = [0.0]
    cache = LRUCache(max_entries=2, ttl_s=10, clock=lambda: now[0])
    cache.set("a", {"v": 1})
    cache.set("b", {"v": 2})
    assert cache.get("a") == {"v": 1}  # a is now the most recent
    cache.set("c", {"v": 3})
    assert cache.get("b") is None and cache.get("a") == {"v": 1} and len(cache) == 2
    now[0] = 10.0
    assert cache.get("a") is None and cache.get("c") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_redis_degrades_to_misses_and_reports_once_per_pause(caplog):
    errors: list[str] = []
    now = [0.0]
    cache = RedisCache(
        f"redis://127.0.0.1:{_free_port()}/0",
        ttl_s=5,
        retry_after_s=30,
        timeout_s=0.2,
        on_error=errors.append,
        clock=lambda: now[0],
    )
    assert cache.get("k") is None
    cache.set("k", {"v": 1})  # skipped: Redis is marked down for 30 s
    assert errors == ["get"] and not cache.available
    assert sum("answering without the cache" in r.message for r in caplog.records) == 1
    now[0] = 31.0
    assert cache.available and cache.get("k") is None and errors == ["get", "get"]
