"""`chatforge serve` refuses bad set-ups with a message and exit code 2, before loading any model."""

from __future__ import annotations

from typer.testing import CliRunner

from chatforge.cli import app


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
