"""Property-based fuzzing of every file reader (through `read_source`, as ingest calls it) and of
clean (issue 22, item 3). Invariants, whatever the bytes:

- a source ends in bounded time: its tables, or an IngestError whose message names the source;
  never another exception;
- every reject row carries a known reason and a location;
- records are conserved: in a JSONL source every non-blank line, and in a CSV source every data
  row, is either a kept conversation or a reject;
- clean accounts for every conversation: kept + each drop count = conversations in;
- `data inspect` (format guess + sample read) ends in a report or an InspectError.

The default profile runs in the normal suite (under a minute); `CHATFORGE_FUZZ=nightly` runs the
long profile (`pytest tests/unit/data/test_fuzz_readers.py --hypothesis-show-statistics`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatforge.data.clean import COUNT_KEYS, clean_turns
from chatforge.data.inspect import InspectError, inspect_source
from chatforge.data.ingest import REJECT_REASONS, IngestError, read_source
from chatforge.params import CleanParams, Source

settings.register_profile("suite", max_examples=30, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("nightly", max_examples=3000, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("nightly" if os.environ.get("CHATFORGE_FUZZ") == "nightly" else "suite")

FILE_FORMATS = {  # format -> file name the reader takes
    "messages_jsonl": "data.jsonl", "conversations_json": "data.json", "csv": "data.csv", "tsv": "data.tsv",
    "chatterbot_yaml": "data.yml", "dailydialog": "dialogues_text.txt", "feedback": "data.jsonl",
    "alpaca": "data.json", "crosswoz": "data.json", "parquet": "data.parquet",
}
SECONDS = 20  # a fuzzed source this small must end far sooner

# text a hostile or broken file holds: scripts, width forms, controls, quotes, separators, surrogate-ish
_PIECES = st.sampled_from(list('"\',;\t\n\r{}[]:\\#&*!|>-\ufeff\u200b😀')
                         + ["０９１２-３４５-６７８", "__eou__", "東京の天気", "A123456(7)", "&amp;", "<b>"])
TEXT = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | _PIECES,
                max_size=6).map("".join)


def _hostile(kind: str, n: int) -> bytes:
    return {
        "deep_json": b"[" * n + b"]" * n,
        "deep_content": b'{"messages": [{"role": "user", "content": ' + b"[" * n + b"]" * n + b"}]}\n",
        "yaml_bomb": b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n".encode() for i in range(min(n, 8))),
        "unclosed_quote": b"utterance,response\nDo you ship abroad?,\"Yes, to 30 countries\n" + b"".join(
            f"q{i},a{i}\n".encode() for i in range(n)),
        "huge_cell": b"utterance,response\nhi," + b"x" * (131_073 + n) + b"\n",
        "utf16": "utterance,response\nhello,hi there\n".encode("utf-16"),
        "nul_bytes": b"\x00" * n,
    }[kind]


BYTES = st.one_of(
    st.binary(max_size=2048),
    TEXT.map(lambda t: t.encode("utf-8")),
    st.tuples(TEXT, st.sampled_from(["utf-8", "utf-16", "gbk", "latin-1"])).map(
        lambda te: te[0].encode(te[1], errors="ignore")),
    st.tuples(st.sampled_from(["deep_json", "deep_content", "yaml_bomb", "unclosed_quote", "huge_cell", "utf16",
                               "nul_bytes"]), st.integers(1, 12_000)).map(lambda kn: _hostile(*kn)),
)


def _read(tmp: Path, fmt: str, data: bytes, **options: object) -> tuple[pl.DataFrame, pl.DataFrame, object] | str:
    path = tmp / FILE_FORMATS[fmt]
    path.write_bytes(data)
    source = Source(path=path.name, format=fmt, name="fuzz", options=options)  # type: ignore[arg-type]
    try:
        return read_source(source, base_dir=tmp)
    except IngestError as exc:
        return str(exc)


def _check_tables(result: tuple[pl.DataFrame, pl.DataFrame, object]) -> None:
    turns, rejects, stats = result
    assert turns["conversation_id"].n_unique() == stats.conversations  # type: ignore[attr-defined]
    assert rejects.height == stats.rejects  # type: ignore[attr-defined]
    assert set(rejects["reason"].to_list()) <= set(REJECT_REASONS)
    assert all(rejects["location"].to_list())


@given(fmt=st.sampled_from(sorted(FILE_FORMATS)), data=BYTES)
def test_any_bytes_in_any_format_end_in_tables_or_a_clear_error(tmp_path_factory, fmt: str, data: bytes) -> None:
    import time

    started = time.monotonic()
    result = _read(tmp_path_factory.mktemp("fuzz"), fmt, data)
    assert time.monotonic() - started < SECONDS
    if isinstance(result, str):
        assert "ingest.sources[0] (name 'fuzz'" in result and "Traceback" not in result and len(result) < 2000
    else:
        _check_tables(result)


@given(name=st.sampled_from(["data.jsonl", "data.json", "data.csv", "data.tsv", "data.yml", "dialogues_text.txt",
                             "data.parquet", "data.bin"]), data=BYTES, guess=st.booleans())
def test_data_inspect_ends_in_a_report_or_a_clear_error(tmp_path_factory, name: str, data: bytes, guess: bool) -> None:
    """`chatforge data inspect` on the same inputs: the format guess and the sample read end in a
    report or an InspectError, never another exception."""
    path = tmp_path_factory.mktemp("inspect") / name
    path.write_bytes(data)
    fmt = None if guess else {"data.jsonl": "messages_jsonl", "data.json": "conversations_json", "data.csv": "csv",
                              "data.tsv": "tsv", "data.yml": "chatterbot_yaml", "data.parquet": "parquet",
                              "dialogues_text.txt": "dailydialog", "data.bin": "csv"}[name]
    try:
        report = inspect_source(path, fmt=fmt, sample=200)
    except InspectError as exc:
        assert str(exc) and len(str(exc)) < 2000
    else:
        assert report is not None


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "bot", "human", "??"]),
                                 "content": TEXT | st.integers() | st.none()})
RECORD = st.one_of(
    st.builds(lambda ms: json.dumps({"messages": ms}, ensure_ascii=False), st.lists(MESSAGE, max_size=5)),
    st.builds(lambda ms: json.dumps({"conversations": [{"from": m["role"], "value": m["content"]} for m in ms]}),
              st.lists(MESSAGE, max_size=4)),
    TEXT.filter(lambda t: t.strip() and "\n" not in t and "\r" not in t),
    st.integers(1, 5000).map(lambda n: '{"messages": ' + "[" * n + "]" * n + "}"),
    st.integers(1, 200_000).map(lambda n: json.dumps({"messages": [{"role": "user", "content": "q" * n},
                                                                    {"role": "assistant", "content": "a"}]})),
)


@given(lines=st.lists(RECORD, min_size=1, max_size=12))
def test_every_jsonl_line_is_kept_or_rejected(tmp_path_factory, lines: list[str]) -> None:
    # a blank line is not a record (nor one of only a byte order mark, which decoding removes)
    lines = [line for line in lines if line.replace("\ufeff", "").strip() and not any(c in line for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")]
    if not lines:
        return
    result = _read(tmp_path_factory.mktemp("jsonl"), "messages_jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    assert not isinstance(result, str), result
    _check_tables(result)
    _, _, stats = result
    assert stats.conversations + stats.rejects == len(lines)  # type: ignore[attr-defined]


@given(rows=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=12))
def test_every_csv_row_is_kept_or_rejected(tmp_path_factory, rows: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)  # a bare \r is a line break unquoted
    writer.writerow(["utterance", "response"])
    writer.writerows(rows)
    result = _read(tmp_path_factory.mktemp("csv"), "csv", buffer.getvalue().encode("utf-8"), intent_column=None)
    assert not isinstance(result, str), result
    _check_tables(result)
    _, _, stats = result
    assert stats.conversations + stats.rejects == len(rows)  # type: ignore[attr-defined]


@given(conversations=st.lists(st.tuples(st.sampled_from(["zh", "en"]), TEXT, TEXT), min_size=1, max_size=10),
       nfkc=st.booleans(), t2s=st.booleans())
def test_clean_accounts_for_every_conversation(conversations: list[tuple[str, str, str]], nfkc: bool, t2s: bool) -> None:
    rows = []
    for i, (lang, question, answer) in enumerate(conversations):
        for turn, (role, content) in enumerate((("user", question), ("assistant", answer))):
            rows.append({"conversation_id": f"fuzz:{i}", "turn": turn, "role": role, "content": content,
                         "lang": lang, "source": "fuzz", "intent": None})
    frame = pl.DataFrame(rows)
    params = CleanParams(nfkc=nfkc, traditional_to_simplified=t2s, synonyms_path=None)
    cleaned, counts = clean_turns(frame, params=params)
    assert set(counts) == set(COUNT_KEYS)
    dropped = sum(counts[k] for k in ("dropped_empty", "dropped_length", "dropped_exact_duplicate",
                                      "dropped_near_duplicate"))
    assert counts["conversations_in"] == len(conversations)
    assert counts["conversations_out"] + dropped == counts["conversations_in"]
    assert cleaned["conversation_id"].n_unique() == counts["conversations_out"]
    again, _ = clean_turns(frame, params=params)
    assert again.equals(cleaned)  # deterministic
