"""API keys are stored hashed; the token bucket allows a burst then the configured rate."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.auth import KeyRing, add_key, hash_key, read_keys


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


def test_adding_a_key_keeps_every_field_of_the_existing_ones(tmp_path):
    path = tmp_path / "keys.json"
    old = {
        "id": "key_0a1b2c3d",
        "name": "web",
        "sha256": hash_key("cf-old"),
        "created_at": "2024-05-01T08:30:00+00:00",
        "owner": {"team": "support", "ticket": 42},
    }
    path.write_text(json.dumps({"version": 1, "keys": [old]}), encoding="utf-8")
    record, plain = add_key(path, name="bench")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1 and data["keys"][0] == old
    new = data["keys"][1]
    assert set(new) == {"id", "name", "sha256", "created_at"}
    assert (new["id"], new["name"], new["sha256"]) == (record.id, "bench", hash_key(plain))
    assert [k.name for k in read_keys(path)] == ["web", "bench"]
    add_key(path, name="third")
    assert json.loads(path.read_text(encoding="utf-8"))["keys"][:2] == [old, new]


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
