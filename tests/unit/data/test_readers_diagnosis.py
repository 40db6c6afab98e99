"""Readers say what is really wrong: other message key names, a mis-encoded CSV header, a broken
zip beside good ones, unbounded input in messages, a source that yields nothing, text parts."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from chatforge.data.ingest import IngestError, read_source
from chatforge.params import Source

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ingest"


def read(path: Path | str, fmt: str, *, vectorised: bool = True, **options: Any) -> Any:
    return read_source(Source(path=str(path), format=fmt, name="t", options=options), vectorised=vectorised)


def rows(turns: pl.DataFrame) -> list[tuple[Any, ...]]:
    return turns.select("conversation_id", "turn", "role", "content").rows()


def reject_rows(rejects: pl.DataFrame) -> list[tuple[str, str]]:
    return rejects.select("location", "reason").rows()


def _messages(role_key: str, content_key: str, *pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{role_key: r, content_key: c} for r, c in pairs]


PAIR = (("user", "Where is my order?"), ("assistant", "It ships today."))
EXPECTED = [(0, "user", "Where is my order?"), (1, "assistant", "It ships today.")]
ODD_KEYS_MESSAGE = (
    "message 0 has keys ['who', 'says']; expected a role key (role, from, speaker) and a content key "
    "(content, value, text), or set options.role_key / options.content_key"
)


# ------------------------------------------------------------ other key names inside messages
def test_messages_jsonl_accepts_common_key_names_and_names_odd_ones(tmp_path: Path) -> None:
    records = [
        {"id": "openai_with_sharegpt_keys", "messages": _messages("from", "value", *PAIR)},
        {"id": "sharegpt_with_openai_keys", "conversations": _messages("role", "content", *PAIR)},
        {"id": "speaker_text", "messages": _messages("speaker", "text", *PAIR)},
        {"id": "odd", "messages": _messages("who", "says", *PAIR)},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    turns, rejects, _ = read(path, "messages_jsonl")
    for cid in ("openai_with_sharegpt_keys", "sharegpt_with_openai_keys", "speaker_text"):
        assert rows(turns.filter(pl.col("conversation_id") == f"t:{cid}")) == [
            (f"t:{cid}", *row) for row in EXPECTED
        ]
    assert reject_rows(rejects) == [(f"{path}:4", "missing_field")]
    assert rejects["raw"][0].startswith(f'"messages" {ODD_KEYS_MESSAGE}: ')


@pytest.mark.parametrize("vectorised", [True, False])
def test_conversations_json_accepts_common_key_names_and_names_odd_ones(
    tmp_path: Path, vectorised: bool
) -> None:
    doc = {
        "conversations": [
            {"id": "from_value", "messages": _messages("from", "value", *PAIR)},
            {"id": "odd", "messages": _messages("who", "says", *PAIR)},
            {"id": "plain", "messages": _messages("role", "content", *PAIR)},
        ]
    }
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    turns, rejects, _ = read(path, "conversations_json", vectorised=vectorised)
    assert rows(turns) == [("t:from_value", *r) for r in EXPECTED] + [("t:plain", *r) for r in EXPECTED]
    assert reject_rows(rejects) == [(f"{path}#odd", "missing_field")]
    assert rejects["raw"][0].startswith(f'"messages" {ODD_KEYS_MESSAGE}: ')


def test_role_and_content_key_options(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": _messages("who", "says", *PAIR)}) + "\n", encoding="utf-8")
    turns, rejects, _ = read(path, "messages_jsonl", role_key="who", content_key="says")
    assert rows(turns) == [("t:1", *r) for r in EXPECTED] and rejects.is_empty()


# ---------------------------------------------------------------------- text parts in both formats
PARTS = [{"type": "text", "text": "It ships "}, {"type": "text", "text": "today."}]


@pytest.mark.parametrize("vectorised", [True, False])
def test_text_parts_joined_in_conversations_json(tmp_path: Path, vectorised: bool) -> None:
    conv = {
        "id": "c",
        "messages": [
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": PARTS},
        ],
    }
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps({"conversations": [conv]}), encoding="utf-8")
    turns, rejects, _ = read(path, "conversations_json", vectorised=vectorised)
    assert rows(turns) == [("t:c", *r) for r in EXPECTED] and rejects.is_empty()


def test_text_parts_joined_in_messages_jsonl(tmp_path: Path) -> None:
    conv = {
        "id": "c",
        "messages": [
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": PARTS},
        ],
    }
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(conv) + "\n", encoding="utf-8")
    turns, rejects, _ = read(path, "messages_jsonl")
    assert rows(turns) == [("t:c", *r) for r in EXPECTED] and rejects.is_empty()


# ------------------------------------------------------------------------------- GBK CSV header
GBK_CSV = "问题,回答\n你们几点开门？,早上九点开门。\n可以退货吗？,七天内可以退货。\n"
GBK_ROWS = [
    ("t:2", 0, "user", "你们几点开门？"),
    ("t:2", 1, "assistant", "早上九点开门。"),
    ("t:3", 0, "user", "可以退货吗？"),
    ("t:3", 1, "assistant", "七天内可以退货。"),
]


def test_gbk_csv_header_says_encoding(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_bytes(GBK_CSV.encode("gbk"))
    columns = {"utterance_column": "问题", "response_column": "回答"}
    with pytest.raises(IngestError) as err:
        read(path, "csv", **columns)
    message = str(err.value)
    assert f"{path}: its header is not valid utf-8, so its column names cannot be matched" in message
    assert "options.encoding" in message and "auto" in message
    for encoding in ("auto", "gbk"):
        turns, rejects, _ = read(path, "csv", encoding=encoding, **columns)
        assert rows(turns) == GBK_ROWS and rejects.is_empty()


def test_encoding_auto_keeps_utf8(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text(GBK_CSV, encoding="utf-8")
    turns, _, _ = read(path, "csv", encoding="auto", utterance_column="问题", response_column="回答")
    assert rows(turns) == GBK_ROWS


# ------------------------------------------------------------------------- broken zips in a folder
def test_empty_and_truncated_zips_are_rejects_beside_a_good_one(tmp_path: Path) -> None:
    folder = tmp_path / "crosswoz"
    folder.mkdir()
    with zipfile.ZipFile(folder / "good.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(FIXTURES / "crosswoz.json", "train.json")
    (folder / "empty.zip").write_bytes(b"")
    data = (folder / "good.zip").read_bytes()
    (folder / "truncated.zip").write_bytes(data[: len(data) // 2])
    turns, rejects, stats = read(folder, "crosswoz")
    good, _, _ = read(FIXTURES / "crosswoz.json", "crosswoz")
    assert stats.files == 3
    assert turns["content"].to_list() == good["content"].to_list() and turns.height > 0
    assert reject_rows(rejects) == [
        (f"{folder}/empty.zip", "unreadable_file"),
        (f"{folder}/truncated.zip", "unreadable_file"),
    ]
    assert rejects["raw"][0].startswith("not a readable zip archive (0 bytes; BadZipFile: ")
    assert "Fetch it again or remove it from the source" in rejects["raw"][1]


# ------------------------------------------------------------------------ no unbounded echo
def test_csv_pointed_at_a_long_json_line_says_little(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    record = {"messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]}
    path.write_text(json.dumps([record] * 3000) + "\n", encoding="utf-8")  # ~400 KB, one line
    assert path.stat().st_size > 300_000
    with pytest.raises(IngestError) as err:
        read(path, "csv")
    message = str(err.value)
    assert "has no column for options.utterance_column = 'utterance'" in message
    assert "… (" in message and len(message) < 2_000


def test_long_role_name_and_id_are_cut(tmp_path: Path) -> None:
    role = "narrator " * 50_000
    records = [
        {"id": "r", "messages": [{"role": role, "content": "hi"}, {"role": "assistant", "content": "ok"}]},
        {"id": "d" * 10_000, "messages": _messages("role", "content", *PAIR)},
        {"id": "d" * 10_000, "messages": _messages("role", "content", *PAIR)},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    _, rejects, _ = read(path, "messages_jsonl")
    assert reject_rows(rejects) == [(f"{path}:1", "unknown_role"), (f"{path}:3", "duplicate_id")]
    assert all(len(raw) < 1_000 for raw in rejects["raw"])
    assert rejects["raw"][0].startswith("message 0 role 'narrator narrator") and "…" in rejects["raw"][0]


# ------------------------------------------------------------------- a source with no conversation
def test_source_with_no_conversation_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text("not json\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with caplog.at_level(logging.WARNING, logger="chatforge.data.ingest"):
        turns, rejects, stats = read(path, "messages_jsonl")
    assert turns.is_empty() and stats.conversations == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "ingest.sources[0] (name 't', format messages_jsonl): 0 conversations; 2 rejects "
        f"(malformed_json: 1, too_few_turns: 1), the first at {path}:1: " + rejects["raw"][0]
    ]


def test_empty_folder_source_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatforge.data.ingest"):
        read(tmp_path, "alpaca")
    assert any("0 conversations and no rejects" in r.getMessage() for r in caplog.records)


def test_source_with_conversations_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatforge.data.ingest"):
        read(FIXTURES / "openai.jsonl", "messages_jsonl")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
