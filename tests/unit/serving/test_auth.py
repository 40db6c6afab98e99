"""API keys are stored hashed; the token bucket allows a burst then the configured rate."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.auth import KeyRing, RateLimiter, add_key, hash_key, read_keys


def test_keys_file_holds_only_hashes(tmp_path):
    path = tmp_path / "keys.json"
    record, plain = add_key(path, name="web")
    text = path.read_text(encoding="utf-8")
    assert plain.startswith("cf-") and len(plain) > 40 and plain not in text
    assert json.loads(text)["keys"][0]["sha256"] == hash_key(plain)
    ring = KeyRing(read_keys(path))
    assert ring.lookup(plain) == record and ring.lookup(plain + "x") is None
    with pytest.raises(ValueError, match="a key named 'web' exists already"):
        add_key(path, name="web")


def test_keys_add_command_prints_the_key_once(tmp_path):
    path = tmp_path / "k.json"
    result = CliRunner().invoke(app, ["keys", "add", "bench", "--keys", str(path)])
    assert result.exit_code == 0, result.output
    plain = result.stdout.strip().splitlines()[-1]
    assert KeyRing(read_keys(path)).lookup(plain).name == "bench"


def test_bad_keys_file_is_a_clear_error(tmp_path):
    path = tmp_path / "k.json"
    path.write_text('{"keys": [{"id": 1}]}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a chatforge keys file"):
        read_keys(path)
    with pytest.raises(FileNotFoundError, match="chatforge keys add NAME"):
        read_keys(tmp_path / "none.json")


def test_token_bucket_burst_then_rate():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(1.0)  # one token per second
    assert limiter.acquire("other") == 0.0  # keys are limited separately
    now[0] = 1.0
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") > 0
