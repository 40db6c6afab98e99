"""`chatforge data inspect`: format guessing, exactly ingest's counts, the pasteable source entry,
nothing written, and a clear exit 2 for what it cannot read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.data.ingest import read_source
from chatforge.data.inspect import InspectError, guess_format, inspect_source, parse_options
from chatforge.params import IngestParams

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ingest"

# fixture, guessed format, kept conversations, turns, rejects, options the pasted entry carries
CASES = [
    ("conversations.json", "conversations_json", 3, 9, 0, {}),
    ("openai.jsonl", "messages_jsonl", 2, 5, 0, {}),
    ("sharegpt.jsonl", "messages_jsonl", 2, 7, 0, {}),
    ("exchanges.csv", "csv", 2, 6, 0, {"conversation_column": "session"}),
    (
        "exchanges.tsv",
        "tsv",
        2,
        4,
        0,
        {"utterance_column": "question", "response_column": "answer", "intent_column": "label"},
    ),
    ("chatterbot.yml", "chatterbot_yaml", 2, 6, 0, {}),
    ("crosswoz.json", "crosswoz", 2, 10, 0, {}),
    ("dailydialog.txt", "dailydialog", 3, 7, 0, {}),
    ("cornell", "cornell", 1, 4, 1, {}),
    ("feedback", "feedback", 2, 4, 0, {}),
    # formats added with issue 14 (fixtures owned by the readers' tests)
    ("alpaca.json", "alpaca", 3, 9, 6, {}),
    ("messages_array.json", "messages_jsonl", 3, 7, 2, {}),
]


def run(*args: str) -> Any:
    # a params path that does not exist: ingest defaults, no source names taken
    return CliRunner().invoke(app, ["data", "inspect", *args, "--params", "no-such-params.yaml"])


def pasted_sources(output: str) -> list[dict[str, Any]]:
    block = output.split("paste under `ingest.sources:` in params.yaml:\n", 1)[1].split("\nnote:")[0]
    return yaml.safe_load(block)


def counts(output: str) -> tuple[int, int, int]:
    match = re.search(r"read: (\d+) conversations kept \((\d+) turns\), (\d+) rejected", output)
    assert match, output
    return int(match[1]), int(match[2]), int(match[3])


def listing(*folders: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p), p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in folder.rglob("*")
    )


@pytest.mark.parametrize(("name", "fmt", "convs", "turns", "rejects", "options"), CASES)
def test_every_fixture_guessed_counted_as_ingest_and_pasteable(
    name: str, fmt: str, convs: int, turns: int, rejects: int, options: dict[str, Any]
) -> None:
    result = run(str(FIXTURES / name))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{FIXTURES / name}: format {fmt} (guessed)")
    assert counts(result.output) == (convs, turns, rejects)
    entries = pasted_sources(result.output)
    params = IngestParams.model_validate({"sources": entries})  # what params.yaml would validate
    source = params.sources[0]
    assert source.format == fmt
    assert source.options.model_dump(exclude_defaults=True) == options
    # the pasted entry, read by the ingest stage's own function, gives the same counts
    _, _, stats = read_source(source)
    assert (stats.conversations, stats.turns, stats.rejects) == (convs, turns, rejects)


def test_report_holds_languages_intents_rejects_and_shows_first_n() -> None:
    report = inspect_source(FIXTURES / "exchanges.csv", show=1)
    assert report.format == "csv" and report.guessed
    assert report.langs == {"en": 1, "zh": 1}
    assert report.intents == {"order_status": 1, "account": 1}
    assert [c.id for c in report.shown] == ["exchanges:a"]
    assert report.shown[0].messages[0] == ("user", "Hi, where is my parcel?")
    cornell = inspect_source(FIXTURES / "cornell")
    assert cornell.rejects_by_reason == {"too_few_turns": 1}
    assert cornell.reject_examples[0].location.endswith("movie_conversations.txt:2")


def test_rejects_counted_per_reason_with_examples(tmp_path: Path) -> None:
    lines = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "only me"}]},
        {"messages": [{"role": "user", "content": "again"}]},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"messages": [\n'
    (tmp_path / "chats.jsonl").write_text(text, encoding="utf-8")
    result = run(str(tmp_path / "chats.jsonl"))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == (1, 2, 5)
    assert (
        "rejects by reason: too_few_turns 2, unknown_role 1, empty_content 1, malformed_json 1"
        in result.output
    )
    assert "unknown_role" in result.output and "options.role_map" in result.output
    # --option fixes what the rejects name
    fixed = run(str(tmp_path / "chats.jsonl"), "--option", "role_map={narrator: user}")
    assert counts(fixed.output) == (2, 4, 4)
    assert pasted_sources(fixed.output)[0]["options"] == {"role_map": {"narrator": "user"}}


def test_options_override_guesses_and_limit_and_sample() -> None:
    result = run(str(FIXTURES / "exchanges.tsv"), "-o", "intent_column=null", "-o", "lang=en", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert (
        "conversation, as split and balance count them): (none) 2" in result.output
        and "languages: en 2" in result.output
    )
    assert result.output.count("    user ") == 1
    source = pasted_sources(result.output)[0]
    assert source["options"] == {
        "lang": "en",
        "utterance_column": "question",
        "response_column": "answer",
        "intent_column": None,
    }
    sampled = run(str(FIXTURES / "conversations.json"), "--sample", "1")
    assert counts(sampled.output) == (1, 2, 0) and "stopped at the first 1 records" in sampled.output
    assert "limit" not in pasted_sources(sampled.output)[0].get("options", {})
    assert parse_options(["columns.prompt=question", "limit=5"]) == {
        "columns": {"prompt": "question"},
        "limit": 5,
    }


def test_new_formats_guessed(tmp_path: Path) -> None:
    import polars as pl

    alpaca = [
        {"instruction": "Say hi", "input": "", "output": "Hi!"},
        {"instruction": "营业时间？", "output": "9点。"},
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "alpaca.jsonl").write_text("\n".join(json.dumps(x) for x in alpaca), encoding="utf-8")
    share = [{"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]}]
    (tmp_path / "share.json").write_text(json.dumps(share), encoding="utf-8")
    pl.DataFrame({"Question": ["a?"], "Answer": ["A"]}).write_parquet(tmp_path / "qa.parquet")
    (tmp_path / "notes.txt").write_text("q\ta\nhi\thello\n", encoding="utf-8")
    assert guess_format(tmp_path / "alpaca.json").format == "alpaca"
    assert guess_format(tmp_path / "alpaca.jsonl").format == "alpaca"
    assert guess_format(tmp_path / "share.json").format == "messages_jsonl"
    parquet = guess_format(tmp_path / "qa.parquet")
    assert (parquet.format, parquet.options) == (
        "parquet",
        {"utterance_column": "Question", "response_column": "Answer"},
    )
    assert guess_format(tmp_path / "notes.txt").format == "tsv"
    for name, fmt, convs in [
        ("alpaca.json", "alpaca", 2),
        ("share.json", "messages_jsonl", 1),
        ("qa.parquet", "parquet", 1),
    ]:
        result = run(str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert f"format {fmt} (guessed)" in result.output and counts(result.output)[0] == convs
        IngestParams.model_validate({"sources": pasted_sources(result.output)})


def test_hf_dataset_folder_guessed_with_its_split(tmp_path: Path) -> None:
    import datasets
    rows = {"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]}
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "hf"))
    before = listing(tmp_path)
    result = run(str(tmp_path / "hf"))
    assert result.exit_code == 0, result.output
    assert "format hf_dataset (guessed)" in result.output and counts(result.output) == (1, 2, 0)
    assert pasted_sources(result.output)[0]["options"] == {"split": "validation"}
    assert listing(tmp_path) == before


def test_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("question,answer\nhi,hello\n", encoding="utf-8")
    before = listing(tmp_path, FIXTURES)
    for target in [
        tmp_path / "data.csv",
        *(FIXTURES / case[0] for case in CASES if (FIXTURES / case[0]).exists()),
    ]:
        assert run(str(target)).exit_code == 0
    assert listing(tmp_path, FIXTURES) == before


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("garbage.bin", bytes(range(256)) * 8, "binary"),
        ("garbage.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50, "binary"),
        ("empty.jsonl", b"", "is empty"),
        ("notes.xyz", b"hello there\n", "no format chatforge recognises"),
        ("odd.json", b'{"a": 1}', "JSON of no shape"),
    ],
)
def test_unreadable_file_exits_2_naming_it_and_format(
    tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    (tmp_path / name).write_bytes(content)
    result = run(str(tmp_path / name))
    assert result.exit_code == 2
    assert name in result.output and "--format" in result.output and why in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    (tmp_path / "x.tsv").write_text("a\tb\nhi\tthere\n", encoding="utf-8")
    wrong_columns = run(str(tmp_path / "x.tsv"))
    assert wrong_columns.exit_code == 2 and "utterance_column" in wrong_columns.output
    assert "--option" in wrong_columns.output
    assert run(str(tmp_path / "x.tsv"), "-o", "utterance_column=a", "-o", "response_column=b").exit_code == 0
    assert "is not a format" in run(str(tmp_path / "x.tsv"), "--format", "nope").output
    bad_option = run(str(tmp_path / "x.tsv"), "-o", "bogus=1")
    assert bad_option.exit_code == 2 and "unknown option 'bogus'" in bad_option.output
    missing = run(str(tmp_path / "missing.csv"))
    assert missing.exit_code == 2 and "no such file" in missing.output
    with pytest.raises(InspectError, match="KEY=VALUE"):
        parse_options(["novalue"])
    huge = "x" * 10_000
    (tmp_path / f"{'y' * 10}.xyz").write_text(huge, encoding="utf-8")
    assert len(run(str(tmp_path / f"{'y' * 10}.xyz")).output) < 800  # never echoes the content


def test_pasting_the_entry_into_params_yaml_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatforge.params import load_section

    root = Path(__file__).resolve().parents[3]
    (tmp_path / "data" / "raw" / "mine").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "mine" / "faq.csv").write_text(
        "Question,Answer,Category\nWhen do you open?,At 9am.,hours\n几点关门？,晚上9点。,hours\n",
        encoding="utf-8",
    )
    params_text = (root / "params.yaml").read_text(encoding="utf-8")
    (tmp_path / "params.yaml").write_text(params_text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "inspect", "data/raw/mine/faq.csv"])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output  # under data/raw/: nothing to warn about
    assert "languages: en 1, zh 1" in result.output and "them): hours 2" in result.output
    block = result.output.split("params.yaml:\n\n", 1)[1]
    # paste the printed lines (already indented for the list) right under `  sources:`
    pasted = params_text.replace("  sources:\n", "  sources:\n" + block, 1)
    (tmp_path / "params.yaml").write_text(pasted, encoding="utf-8")
    ingest = load_section("ingest", path=tmp_path / "params.yaml")
    assert isinstance(ingest, IngestParams)
    mine = ingest.sources[0]
    assert (mine.path, mine.format, mine.source_name) == ("data/raw/mine/faq.csv", "csv", "faq")
    assert mine.options.utterance_column == "Question" and mine.options.intent_column == "Category"
    assert len(ingest.sources) == len(yaml.safe_load(params_text)["ingest"]["sources"]) + 1


@pytest.mark.parametrize(
    ("content", "args"),
    [(bytes(range(256)) * 4, ["--format", "messages_jsonl"]), (b"PAR1 not really", [])],
)
def test_nothing_kept_exits_2_after_the_report(tmp_path: Path, content: bytes, args: list[str]) -> None:
    path = tmp_path / ("x.parquet" if not args else "x.jsonl")
    path.write_bytes(content)
    result = run(str(path), *args)
    assert result.exit_code == 2
    assert "rejects by reason:" in result.output and "ingest would keep no conversation" in result.output
    assert "--format" in result.output


@pytest.mark.parametrize(("name", "text", "reason"), [
    # a 453-byte-class alias bomb: the format guess must not expand it either (the fuzz suite found it did)
    ("bomb.yml", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)), "yaml_aliases"),
    ("deep.yml", "[" * 5000 + "]" * 5000, "too_deep"),
    ("deep.json", '[{"messages": ' + "[" * 10_000 + "]" * 10_000 + "}]", "too_deep"),
])
def test_hostile_documents_are_judged_not_crashed_on(tmp_path, name, text, reason):
    import time

    from chatforge.data.inspect import inspect_source

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    started = time.monotonic()
    fmt = "conversations_json" if name.endswith(".json") else None  # deep JSON has no guessable shape
    report = inspect_source(path, fmt=fmt)
    assert time.monotonic() - started < 5
    assert (report.conversations, report.rejects_by_reason.get(reason)) == (0, 1)
