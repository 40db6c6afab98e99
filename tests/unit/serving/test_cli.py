"""`chatforge serve` refuses bad set-ups with a message and exit code 2, before loading any model."""

from __future__ import annotations

import datetime as dt

from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.store import Conversation, open_store, record_conversation, utcnow


def test_serve_without_keys_file_explains_how_to_create_one(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: [{name: a, model: models/a}]\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", "--params", str(params)], env={"CHATFORGE_API_KEYS": ""})
    assert result.exit_code == 2
    assert "no API keys file: pass --keys FILE" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        app, ["serve", "--params", str(params), "--keys", str(tmp_path / "none.json")]
    )
    assert result.exit_code == 2 and "API keys file not found" in result.output


def test_serve_with_bad_params_names_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "serve:\n  variants: [{name: a, model: m}]\n  personas: {x: {temperature: 2}}\n", encoding="utf-8"
    )
    result = CliRunner().invoke(app, ["serve", "--params", str(params), "--no-auth"])
    assert result.exit_code == 2
    assert "serve.personas.x.temperature = 2" in result.output


def test_serve_with_a_missing_word_list_names_the_key_and_the_fix(tmp_path, monkeypatch):
    """The default lexicons are relative to the project root: started elsewhere, serve says so."""
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: [{name: a, model: m}]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve", "--params", str(params), "--no-auth"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "serve.filter.lexicons: 2 sensitive-word file(s) not found" in result.output
    assert "'lexicons/sensitive/zh.txt', 'lexicons/sensitive/en.txt'" in result.output
    assert "`lexicons: []`" in result.output
    params.write_text("serve:\n  variants: [{name: a, model: m}]\n  filter: {lexicons: []}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", "--params", str(params), "--no-auth"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "serve.variants[].model: 1 model folder(s) not found" in result.output and "'m'" in result.output
    assert "dvc repro" in result.output


def _store_with_ages(db: str, ages_days: dict[str, float]) -> None:
    sessions = open_store(db)
    fields = {
        "variant": "a",
        "model_fingerprint": "f",
        "lang": "en",
        "latency_ms": 1.0,
        "finish_reason": "stop",
    }
    for cid, age in ages_days.items():
        created_at = utcnow() - dt.timedelta(days=age)
        record_conversation(sessions, messages=[], answer="hi", id=cid, created_at=created_at, **fields)


def _ids(db: str) -> list[str]:
    with open_store(db)() as session:
        return sorted(c.id for c in session.query(Conversation))


def test_store_purge_uses_the_retention_from_params_or_the_flag(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _store_with_ages(db, {"c40": 40.0, "c20": 20.0, "c5": 5.0})
    params = tmp_path / "params.yaml"
    params.write_text(
        "serve:\n  variants: [{name: a, model: m}]\n  privacy: {retention_days: 30}\n", encoding="utf-8"
    )
    base = ["store", "purge", "--params", str(params), "--database-url", db]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 1 conversation older than 30 days\n"
    assert _ids(db) == ["c20", "c5"]
    result = CliRunner().invoke(app, [*base, "--older-than-days", "2.5"])
    assert result.stdout == "deleted 2 conversations older than 2.5 days\n"
    assert _ids(db) == []
    result = CliRunner().invoke(app, [*base, "--older-than-days", "0"])
    assert result.exit_code == 2
    assert result.stderr == "--older-than-days must be > 0 (got 0); pass the age in days.\n"


def test_store_purge_with_null_retention_deletes_nothing(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _store_with_ages(db, {"c400": 400.0})
    params = tmp_path / "params.yaml"
    params.write_text(
        "serve:\n  variants: [{name: a, model: m}]\n  privacy: {retention_days: null}\n", encoding="utf-8"
    )
    result = CliRunner().invoke(app, ["store", "purge", "--params", str(params), "--database-url", db])
    assert result.exit_code == 0
    assert result.stderr == (
        "serve.privacy.retention_days is null (keep conversations forever): nothing deleted. "
        "Pass --older-than-days N to purge anyway.\n"
    )
    assert _ids(db) == ["c400"]


def test_serve_with_an_upstream_key_variable_unset_says_which(tmp_path, monkeypatch):
    monkeypatch.delenv("UPSTREAM_KEY_FOR_TEST", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text(
        "serve:\n  variants: [{name: big, upstream: {base_url: 'http://127.0.0.1:9/v1', model: m, "
        "api_key_env: UPSTREAM_KEY_FOR_TEST}}]\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["serve", "--params", str(params), "--no-auth"])
    assert result.exit_code == 2
    assert "variant 'big': upstream.api_key_env names UPSTREAM_KEY_FOR_TEST, which is not set" in result.output


def test_a_variant_needs_exactly_one_of_model_and_upstream(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: [{name: a}]\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", "--params", str(params), "--no-auth"])
    assert result.exit_code == 2
    assert "needs exactly one of `model` (a folder) or `upstream` (a server)" in result.output
