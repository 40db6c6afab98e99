"""Issue 22: hostile or odd input becomes reject rows with reasons (or a diagnosis naming the real
cause), never a traceback that ends ingest nor rows silently lost."""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from chatforge.data import readers
from chatforge.data.ingest import IngestError, ingest, read_source
from chatforge.data.readers import MAX_CELL_CHARS, MAX_JSON_DEPTH
from chatforge.params import IngestParams, Source


def read(path: Path | str, fmt: str, **options: Any) -> Any:
    return read_source(Source(path=str(path), format=fmt, name="t", options=options))


def reasons(rejects: pl.DataFrame) -> list[tuple[str, str]]:
    return rejects.select("location", "reason").rows()


def raw_of(rejects: pl.DataFrame, reason: str) -> str:
    return rejects.filter(pl.col("reason") == reason)["raw"][0]


# ------------------------------------------------------------------------- 1. unclosed CSV quote
def _faq(rows: list[str], header: str = "utterance,response") -> str:
    return "\n".join([header, *rows]) + "\n"


def test_unclosed_quote_is_rejected_at_its_line_and_the_rows_after_it_recovered(tmp_path: Path) -> None:
    normal = [f"Question {k}?,Answer {k}." for k in range(48)]
    path = tmp_path / "faq.csv"
    path.write_text(_faq(["Hello?,Hi.", 'Do you ship abroad?,"Yes, to 30 countries', *normal]), encoding="utf-8")
    turns, rejects, stats = read(path, "csv")
    assert reasons(rejects) == [(f"{path}:3", "unclosed_quote")]
    raw = raw_of(rejects, "unclosed_quote")
    assert raw.startswith("line 3 opens a quoted field that does not close where a field can end (read on to line 51")
    assert "close the quote" in raw and "Do you ship abroad?" in raw
    assert stats.conversations == 49  # Hello + the 48 after the bad line
    assert "t:51" in set(turns["conversation_id"])


def test_unclosed_quote_closed_by_a_later_quoted_cell_still_recovers(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    rows = ['A?,"open answer', "B?,b", 'C?,"quoted, fine"', "D?,d"]
    path.write_text(_faq(rows), encoding="utf-8")
    turns, rejects, _ = read(path, "csv")
    assert reasons(rejects) == [(f"{path}:2", "unclosed_quote")]
    kept = turns.filter(pl.col("role") == "assistant")["content"].to_list()
    assert kept == ["b", "quoted, fine", "d"]


def test_multi_line_quoted_answers_and_odd_one_line_quotes_still_read(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    rows = ['Steps?,"1. Open settings, then Account\n2. Click Save"', 'Size?,"27"" screen"', 'Odd?,"a"b']
    path.write_text(_faq(rows), encoding="utf-8")
    turns, rejects, _ = read(path, "csv")
    assert rejects.height == 0
    answers = turns.filter(pl.col("role") == "assistant")["content"].to_list()
    assert answers == ["1. Open settings, then Account\n2. Click Save", '27" screen', "ab"]


# ------------------------------------------------------------------------- 2. oversized cell
@pytest.mark.parametrize(("fmt", "sep"), [("csv", ","), ("tsv", "\t")])
def test_oversized_cell_is_a_reject_and_other_sources_are_read(tmp_path: Path, fmt: str, sep: str) -> None:
    big = tmp_path / f"big.{fmt}"
    huge = "x" * (MAX_CELL_CHARS + 1)
    big.write_text(
        f"utterance{sep}response\nhi{sep}hello\nlong?{sep}{huge}\nbye{sep}ciao\n", encoding="utf-8"
    )
    quoted_big = tmp_path / f"quoted.{fmt}"
    quoted_big.write_text(f'utterance{sep}response\nq?{sep}"{huge}\n{huge}"\nok{sep}fine\n', encoding="utf-8")
    small = tmp_path / "small.csv"
    small.write_text("utterance,response\nhey,yo\n", encoding="utf-8")
    # 131,072 + 1 characters: csv's own default limit, which used to end ingest with a traceback
    mid = tmp_path / f"mid.{fmt}"
    mid.write_text(f"utterance{sep}response\nq{sep}{'y' * 131_073}\n", encoding="utf-8")
    result = ingest(
        IngestParams(
            sources=[
                Source(path=str(big), format=fmt, name="big"),
                Source(path=str(quoted_big), format=fmt, name="quoted"),
                Source(path=str(mid), format=fmt, name="mid"),
                Source(path=str(small), format="csv", name="small"),
            ]
        )
    )
    assert reasons(result.rejects) == [(f"{big}:3", "field_too_large"), (f"{quoted_big}:2", "field_too_large")]
    assert raw_of(result.rejects, "field_too_large").startswith(
        f"a cell of this row is over {MAX_CELL_CHARS:,} characters ({MAX_CELL_CHARS + 1:,})"
    )
    assert result.stats["big"].conversations == 2
    assert result.stats["quoted"].conversations == 1
    assert result.stats["mid"].conversations == 1  # under the bound: kept (clean judges its length)
    assert result.stats["small"].conversations == 1
    assert result.metrics()["rejects_by_reason"]["field_too_large"] == 2


# ------------------------------------------------------------------------- 3. deep JSON
def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_deep_json_is_rejected_per_line_and_per_document(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [
        json.dumps(good),
        '{"messages": [{"role": "user", "content": ' + _deep(10_000) + '}, {"role": "assistant", "content": "x"}]}',
        '{"messages": ' + _deep(10_000) + "}",
        _deep(10_000),
        # brackets inside strings do not nest
        json.dumps({"messages": [{"role": "user", "content": "[" * 500}, {"role": "assistant", "content": "ok"}]}),
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    turns, rejects, stats = read(path, "messages_jsonl")
    assert reasons(rejects) == [(f"{path}:{n}", "too_deep") for n in (2, 3, 4)]
    assert raw_of(rejects, "too_deep") == (
        f"line nests 10003 levels of arrays/objects; at most {MAX_JSON_DEPTH} are read "
        "(a conversation needs 3): flatten it or remove it from the source"
    )
    assert stats.conversations == 2

    doc = tmp_path / "c.json"
    doc.write_text(
        '{"conversations": [{"id": "a", "messages": [{"role": "user", "content": ' + _deep(10_000) + "}]}]}",
        encoding="utf-8",
    )
    for vectorised in (True, False):
        _, rejects, _ = read_source(
            Source(path=str(doc), format="conversations_json", name="t"), vectorised=vectorised
        )
        assert reasons(rejects) == [(str(doc), "too_deep")]
    arr = tmp_path / "a.json"
    arr.write_text('[{"instruction": "q", "output": ' + _deep(5000) + "}]", encoding="utf-8")
    assert reasons(read(arr, "alpaca")[1]) == [(str(arr), "too_deep")]


def test_depth_scan_lets_ordinary_nesting_through() -> None:
    assert readers.json_depth_exceeds(_deep(MAX_JSON_DEPTH)) is None
    assert readers.json_depth_exceeds(_deep(MAX_JSON_DEPTH + 1)) == MAX_JSON_DEPTH + 1
    assert readers.json_depth_exceeds(json.dumps(["\\\"[" * 300])) is None


# ------------------------------------------------------------------------- 4. YAML alias bomb
BILLION_LAUGHS = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
categories: [bomb]
conversations: [*i]
"""


def test_yaml_alias_bomb_is_rejected_fast_and_other_files_read(tmp_path: Path) -> None:
    (tmp_path / "bomb.yml").write_text(BILLION_LAUGHS, encoding="utf-8")
    (tmp_path / "good.yml").write_text(
        "categories: [greetings]\nconversations:\n- - Hello\n  - Hi &there\n", encoding="utf-8"
    )
    started = time.perf_counter()
    turns, rejects, stats = read(tmp_path, "chatterbot_yaml")
    assert time.perf_counter() - started < 1.0
    assert reasons(rejects) == [(f"{tmp_path}/bomb.yml:2", "yaml_aliases")]
    assert "write the text out in full" in raw_of(rejects, "yaml_aliases")
    assert stats.conversations == 1
    assert turns["content"].to_list() == ["Hello", "Hi &there"]


# ------------------------------------------------------------------------- 5. DailyDialog TAB
def test_dailydialog_tab_inside_an_utterance_is_whitespace_and_bad_labels_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dialogues.txt"
    path.write_text(
        "Hi there __eou__ Hello\tfriend __eou__ How are you? __eou__ Fine __eou__\t1\t1 2 3 4\t0 0 0 0\n"
        "A __eou__ B\twith tab __eou__ C __eou__ D __eou__\n"
        "E __eou__ F __eou__\tnot a topic\n"
        "G __eou__ H __eou__\t2\t1 2 3\t0 0\n",
        encoding="utf-8",
    )
    turns, rejects, stats = read(path, "dailydialog", topic_names={"1": "ordinary_life"})
    assert stats.conversations == 2
    first = turns.filter(pl.col("conversation_id") == "t:1")
    assert first["content"].to_list() == ["Hi there", "Hello\tfriend", "How are you?", "Fine"]
    assert set(first["intent"]) == {"ordinary_life"}
    second = turns.filter(pl.col("conversation_id") == "t:2")
    assert second["content"].to_list() == ["A", "B\twith tab", "C", "D"]
    assert reasons(rejects) == [(f"{path}:3", "malformed_line"), (f"{path}:4", "malformed_line")]
    raws = rejects["raw"].to_list()
    assert raws[0].startswith("the topic field after the last __eou__ is 'not a topic', expected one label")
    assert raws[1].startswith("the acts field is '1 2 3', expected 2 space-separated numbers (one per utterance)")


# ------------------------------------------------------------------------- 6. diagnoses
def _xlsx(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")


def test_xlsx_given_as_csv_says_excel_and_the_advice_works(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    _xlsx(path)
    _, rejects, _ = read(path, "csv")
    assert reasons(rejects) == [(str(path), "unreadable_file")]
    assert raw_of(rejects, "unreadable_file") == (
        'an Excel workbook (.xlsx), not comma-separated text: open it in Excel or LibreOffice and save it as '
        '"CSV UTF-8 (comma delimited)" (.csv, format csv), then point path at that file'
    )
    # following it: Excel's "CSV UTF-8" is comma-separated UTF-8 with a BOM and CRLF line ends
    path.write_bytes("\ufeffutterance,response\r\nhi,hello\r\n".encode("utf-8"))
    turns, rejects, _ = read(path, "csv")
    assert rejects.height == 0 and turns.height == 2


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_csv_and_jsonl_are_decoded(tmp_path: Path, codec: str) -> None:
    csv_path = tmp_path / "faq.csv"
    csv_path.write_bytes("utterance,response\n你好,hello\nhi,您好\n".encode(codec))
    turns, rejects, _ = read(csv_path, "csv")
    assert rejects.height == 0
    assert turns["content"].to_list() == ["你好", "hello", "hi", "您好"]
    jsonl = tmp_path / "m.jsonl"
    record = {"messages": [{"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"}]}
    jsonl.write_bytes((json.dumps(record) + "\n" + json.dumps(record) + "\n").encode(codec))
    turns, rejects, stats = read(jsonl, "messages_jsonl")
    assert rejects.height == 0 and stats.conversations == 2


def test_semicolon_csv_names_the_delimiter_and_the_advice_works(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text("utterance;response;intent\nhi;hello, friend;greet\n", encoding="utf-8")
    with pytest.raises(IngestError) as caught:
        read(path, "csv")
    message = str(caught.value)
    assert "The header looks ';'-separated: set options.delimiter: \";\" for this source." in message
    turns, rejects, _ = read(path, "csv", delimiter=";")
    assert rejects.height == 0
    assert turns["content"].to_list() == ["hi", "hello, friend"]
    assert set(turns["intent"]) == {"greet"}


# ------------------------------------------------------------------------- 7. optional hub id
def test_optional_missing_hub_id_is_skipped_fast_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("datasets")
    import datasets
    import huggingface_hub.constants

    # offline mode not set (as on a user's machine) and the hub not answering the quick check
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(readers, "hub_reachable", lambda timeout=2.0: False)
    params = IngestParams(
        sources=[
            Source(path="someowner/not-downloaded", format="hf_dataset", name="hub", optional=True),
            Source(path="local.csv", format="csv", name="local"),
        ]
    )
    (tmp_path / "local.csv").write_text("utterance,response\nhi,hello\n", encoding="utf-8")
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        result = ingest(params, base_dir=tmp_path)
    assert time.perf_counter() - started < 10
    assert result.metrics()["missing_optional_sources"] == 1
    assert result.stats["local"].conversations == 1
    assert any("optional source someowner/not-downloaded is absent; skipped" in r.message for r in caplog.records)
    # not optional: still an error naming the source and what to do
    with pytest.raises(IngestError, match="no such local path, and as a hub dataset id it could not be loaded"):
        ingest(IngestParams(sources=[params.sources[0].model_copy(update={"optional": False})]), base_dir=tmp_path)


def test_a_quote_closed_by_a_stray_later_quote_is_reported_with_its_lines(tmp_path: Path, caplog) -> None:
    """No parse error to go by (the stray quote ends a field legally): the physical-lines check
    says which record holds lines that read as rows, in the ingest log and in `data inspect`."""
    from chatforge.data.inspect import inspect_source

    path = tmp_path / "faq.csv"
    path.write_text(_faq(['A?,"open answer', "B?,b", "C?,c", 'D?,d"', "E?,e"]), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="chatforge.data.readers"):
        turns, rejects, stats = read(path, "csv")
    assert (stats.conversations, rejects.height) == (2, 0)  # parses: A (lines 2-5) and E
    assert [r.getMessage() for r in caplog.records if r.name == "chatforge.data.readers"] == [
        f"{path}: 1 record(s) span several lines and hold 2 line(s) that read as rows on their own "
        "(the first: lines 2-5); if those are rows, a quote opened on line 2 is not closed where it should be"]
    report = inspect_source(path, fmt="csv")
    assert any("hold 2 line(s) that read as rows on their own" in n for n in report.notes)
    # a real multi-line answer whose lines hold no separator is not reported
    caplog.clear()
    path.write_text(_faq(['Steps?,"Open settings\nClick Save"', "E?,e"]), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="chatforge.data.readers"):
        read(path, "csv")
    assert not [r for r in caplog.records if r.name == "chatforge.data.readers"]
