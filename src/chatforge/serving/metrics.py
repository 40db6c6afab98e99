"""Prometheus metrics, one registry per app so several apps (tests, workers) never collide.

With `--workers N` each worker process counts on its own; set PROMETHEUS_MULTIPROC_DIR (an empty
folder) before starting and /metrics sums every worker through prometheus_client's multiprocess
collector.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "chatforge_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "chatforge_request_latency_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokens = Counter(
            "chatforge_tokens",
            "Tokens by kind (prompt|completion) and variant",
            ["kind", "variant"],
            registry=r,
        )
        self.variant_requests = Counter(
            "chatforge_variant_requests", "Answered requests per variant", ["variant"], registry=r
        )
        self.cache_hits = Counter("chatforge_cache_hits", "Answers served from the cache", registry=r)
        self.cache_misses = Counter(
            "chatforge_cache_misses", "Cacheable requests the cache could not answer", registry=r
        )
        self.cache_errors = Counter(
            "chatforge_cache_errors", "Cache backend failures (Redis unreachable)", ["op"], registry=r
        )
        self.cache_up = Gauge(
            "chatforge_cache_up", "1 when the cache backend answers, 0 when it does not", registry=r
        )
        self.fallbacks = Counter(
            "chatforge_fallbacks",
            "Answers replaced by the fallback (low confidence)",
            ["variant"],
            registry=r,
        )
        self.retrieval_answers = Counter(
            "chatforge_retrieval_answers",
            "Low-confidence answers replaced by a past answer (retrieval in the loop, serve.hybrid)",
            ["variant"],
            registry=r,
        )
        self.filter_actions = Counter(
            "chatforge_filter_actions", "Sensitive-word filter actions", ["stage", "action"], registry=r
        )
        self.errors = Counter("chatforge_errors", "Error responses by type", ["type"], registry=r)
        self.batch_size = Histogram(
            "chatforge_decode_batch_size",
            "Requests decoded together per batch (serve.batch)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.cache_up.set(1)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


__all__ = ["ServeMetrics"]
