"""chatforge.stage: the plumbing every stage script shares (exit codes, clock, timings file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from chatforge import stage
from chatforge.io import EXIT_BAD_INPUT, EXIT_FAILED
from chatforge.params import ParamsError, load_section


class Broken(ValueError):
    pass


def test_bad_input_exits_2_with_the_message_and_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exc, stage.bad_input("clean", Broken, hint="clean.synonyms_path in params.yaml"):
        raise Broken("syn.tsv:2: expected 'variant<TAB>canonical'")
    assert exc.value.exit_code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "clean: syn.tsv:2: expected 'variant<TAB>canonical' (clean.synonyms_path in params.yaml)\n"


def test_bad_input_always_takes_params_errors_and_nothing_unnamed(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("split:\n  val_fraction: lots\n")
    with pytest.raises(typer.Exit) as exc, stage.bad_input("split"):
        load_section("split", path=tmp_path / "params.yaml")
    assert exc.value.exit_code == EXIT_BAD_INPUT
    with pytest.raises(KeyError), stage.bad_input("split", Broken):  # a bug is not bad input: it propagates
        raise KeyError("x")
    with pytest.raises(typer.Exit), stage.bad_input("split"):
        raise ParamsError("split.salt: unknown key")


def test_fail_exits_1_and_require_names_the_stage_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exc:
        stage.fail("distill", "gate failed: retention 0.5 < distill.min_retention 0.9")
    assert exc.value.exit_code == EXIT_FAILED
    assert "distill: gate failed" in capsys.readouterr().err
    with pytest.raises(typer.Exit) as exc:
        stage.require(tmp_path / "clean.parquet", "clean")
    assert exc.value.exit_code == EXIT_BAD_INPUT and "run `dvc repro clean` first" in capsys.readouterr().err
    (tmp_path / "clean.parquet").write_bytes(b"")
    assert stage.require(tmp_path / "clean.parquet", "clean") == tmp_path / "clean.parquet"


def test_write_metrics_writes_the_metrics_then_the_stage_wall_time(tmp_path: Path) -> None:
    stage.start("split")
    stage.write_metrics({"rows": 3}, tmp_path / "split.json", timings=tmp_path / "timings" / "split.json")
    assert json.loads((tmp_path / "split.json").read_text()) == {"rows": 3}  # no time in the metrics
    timing = json.loads((tmp_path / "timings" / "split.json").read_text())
    assert timing["stage"] == "split" and 0 <= timing["wall_seconds"] < 60
    stage.write_metrics({"rows": 3}, tmp_path / "again.json")  # no timings path: no file
    assert sorted(p.name for p in (tmp_path / "timings").iterdir()) == ["split.json"]


def test_the_typed_section_needs_no_isinstance_check() -> None:
    stages = Path(__file__).resolve().parents[2] / "stages"
    asserted = [p.name for p in stages.glob("*.py") if "assert isinstance" in p.read_text(encoding="utf-8")]
    assert not asserted, f"load_section is typed per section; drop the isinstance asserts in {asserted}"
