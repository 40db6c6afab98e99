"""API keys (stored only as SHA-256 hashes) and a per-key token-bucket rate limit.

Keys are 256-bit random tokens, so one SHA-256 is enough to make a leaked keys file useless
(there is nothing to brute-force); the plain key is printed once by `chatforge keys add`.
The rate limit lives in each instance: behind a load balancer a key gets the limit per instance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatforge.io import write_json

KEY_PREFIX = "cf-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    sha256: str


def read_keys(path: Path | str) -> list[ApiKey]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: API keys file not found. Create a key with `chatforge keys add NAME --keys {path}`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [ApiKey(id=k["id"], name=k["name"], sha256=k["sha256"]) for k in data["keys"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a chatforge keys file ({type(exc).__name__}: {exc}); expected "
            '{"keys": [{"id", "name", "sha256"}]} as written by `chatforge keys add`.'
        ) from None


def add_key(path: Path | str, *, name: str) -> tuple[ApiKey, str]:
    """Append a new key to the file (created if missing); returns the record and the plain key."""
    path = Path(path)
    keys = read_keys(path) if path.exists() else []
    if any(k.name == name for k in keys):
        raise ValueError(f"{path}: a key named {name!r} exists already; pick another name.")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(id=f"key_{secrets.token_hex(4)}", name=name, sha256=hash_key(plain))
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rows = [{"id": k.id, "name": k.name, "sha256": k.sha256} for k in keys]
    rows.append({"id": record.id, "name": record.name, "sha256": record.sha256, "created_at": created})
    write_json({"keys": rows}, path)
    path.chmod(0o600)
    return record, plain


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_hash = {k.sha256: k for k in keys}

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        for known, record in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return record
        return None


class RateLimiter:
    """Token bucket per key: `burst` requests at once, refilled at `per_minute` / 60 per second."""

    def __init__(self, *, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str) -> float:
        """0.0 when the request may go ahead, else the seconds until one token is back."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s


__all__ = ["ApiKey", "KeyRing", "RateLimiter", "add_key", "hash_key", "read_keys"]
