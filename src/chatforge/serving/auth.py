"""API keys, stored only as SHA-256 hashes (the per-key rate limit is chatforge.serving.ratelimit).

Keys are 256-bit random tokens, so one SHA-256 is enough to make a leaked keys file useless
(there is nothing to brute-force); the plain key is printed once by `chatforge keys add`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
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
    """Append a new key to the file (created if missing); returns the record and the plain key.

    Every existing record and top-level field is written back as read (created_at, fields added by
    hand or by a newer chatforge): only the new record is added.
    """
    path = Path(path)
    keys = read_keys(path) if path.exists() else []  # validates the file before it is rewritten
    if any(k.name == name for k in keys):
        raise ValueError(f"{path}: a key named {name[:80]!r} exists already; pick another name.")
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"keys": []}
    taken = {k.id for k in keys}
    key_id = f"key_{secrets.token_hex(4)}"
    while key_id in taken:  # 32 random bits: a clash is unlikely, never impossible
        key_id = f"key_{secrets.token_hex(4)}"
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(id=key_id, name=name, sha256=hash_key(plain))
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    data["keys"].append({"id": record.id, "name": record.name, "sha256": record.sha256, "created_at": created})
    write_json(data, path)
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


__all__ = ["ApiKey", "KeyRing", "add_key", "hash_key", "read_keys"]
