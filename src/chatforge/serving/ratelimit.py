"""Per-key rate limits shared by every worker and host that point at the same Redis.

The `limits` library keeps a moving window per API key: at most `burst` requests in any window of
`ceil(burst * 60 / requests_per_minute)` seconds. That allows `burst` requests at once and a
sustained rate of `requests_per_minute` (rounded down when the window has to be rounded up to whole
seconds: burst 20 at 120/min is 20 per 10 s, exactly 120/min).

With `serve.redis_url` the window lives in Redis, so `--workers N` and several hosts count one
budget per key. Without Redis it lives in each process: N workers then give a key N budgets (the
README says so). When Redis stops answering, requests are counted in-process until it is back, so
an outage of the cache never becomes an outage of the API.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger("chatforge.serving.ratelimit")

NAMESPACE = "chatforge-rate"
RETRY_SHARED_S = 5.0  # after a Redis failure, seconds of in-process counting before Redis is tried again


class KeyRateLimiter:
    """`acquire(key_id)` -> 0.0 when the request may go ahead, else the seconds to wait (> 0)."""

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        redis_url: str | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError(f"rate limit needs per_minute > 0 and burst >= 1, got {per_minute}, {burst}")
        self.window_s = max(1, math.ceil(burst * 60.0 / per_minute))
        self.item = RateLimitItemPerSecond(burst, self.window_s)
        self.shared = redis_url is not None
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._on_error = on_error
        self._shared: MovingWindowRateLimiter | None = None
        self._retry_shared_at = 0.0
        if redis_url:
            storage: Storage = storage_from_string(redis_url, wrap_exceptions=True)
            self._shared = MovingWindowRateLimiter(storage)

    @property
    def kind(self) -> str:
        return "redis (shared)" if self._shared else "in-process"

    def acquire(self, key_id: str) -> float:
        limiter = self._local
        if self._shared is not None and time.monotonic() >= self._retry_shared_at:
            limiter = self._shared
        try:
            if limiter.hit(self.item, NAMESPACE, key_id):
                return 0.0
            reset_at = limiter.get_window_stats(self.item, NAMESPACE, key_id).reset_time
        except StorageError as exc:  # Redis down: count in this process, try Redis again later
            if self._on_error:
                self._on_error()
            log.warning("rate limit store unavailable (%s); counting in-process for %g s",
                        type(exc).__name__, RETRY_SHARED_S)
            self._retry_shared_at = time.monotonic() + RETRY_SHARED_S
            if self._local.hit(self.item, NAMESPACE, key_id):
                return 0.0
            reset_at = self._local.get_window_stats(self.item, NAMESPACE, key_id).reset_time
        return max(0.001, reset_at - time.time())


__all__ = ["KeyRateLimiter"]
