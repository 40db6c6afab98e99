"""The alpaca, JSON-array messages, parquet and hf_dataset formats: exact rows and exact rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from chatforge.data.ingest import IngestError, read_source
from chatforge.params import IngestParams, ParamsError, Source, validate_section

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ingest"


def read(path: Path | str, fmt: str, **options: Any) -> tuple[pl.DataFrame, pl.DataFrame, Any]:
    return read_source(Source(path=str(path), format=fmt, name="t", options=options))


def _write_parquet(columns: dict[str, list[Any]], path: Path) -> None:
    pl.DataFrame(columns).write_parquet(path)


def rows(turns: pl.DataFrame) -> list[tuple[Any, ...]]:
    return turns.select("conversation_id", "turn", "role", "content", "lang", "intent").rows()


def reject_rows(rejects: pl.DataFrame) -> list[tuple[str, str]]:
    return rejects.select("location", "reason").rows()


# ------------------------------------------------------------------------------------- alpaca
ALPACA_ROWS = [
    ("t:0", 0, "user", "Translate to English\n你好", "en", None),  # instruction + "\n" + input
    ("t:0", 1, "assistant", "Hello", "en", None),
    ("t:1", 0, "system", "You are a calculator.", "en", None),  # empty input: the instruction alone
    ("t:1", 1, "user", "What is 2+2?", "en", None),
    ("t:1", 2, "assistant", "4", "en", None),
    ("t:2", 0, "user", "What is 2+2?", "en", None),  # history comes before the current turn
    ("t:2", 1, "assistant", "4", "en", None),
    ("t:2", 2, "user", "And 3+3?", "en", None),
    ("t:2", 3, "assistant", "6", "en", None),
]


def test_alpaca_json_array() -> None:
    path = FIXTURES / "alpaca.json"
    turns, rejects, stats = read(path, "alpaca")
    assert rows(turns) == ALPACA_ROWS
    assert reject_rows(rejects) == [
        (f"{path}#3", "missing_field"),
        (f"{path}#4", "missing_field"),
        (f"{path}#5", "non_string_content"),
        (f"{path}#6", "missing_field"),
        (f"{path}#7", "missing_field"),
        (f"{path}#8", "empty_content"),
    ]
    raw = rejects["raw"].to_list()
    assert raw[0] == "record is str, not a JSON object: not an object"
    assert raw[1].startswith(
        "record has keys ['instruction', 'answer']; expected 'instruction' and 'output' "
        "(options.columns.prompt / .response), optionally 'input', 'system', 'history': "
    )
    assert raw[2].startswith("record key 'input' is int, expected text: ")
    assert raw[3] == "record key 'history' entry 0 is not a [user, assistant] pair: [\"only one\"]"
    assert raw[4].startswith("record key 'history' is str, expected a list of [user, assistant] pairs: ")
    assert raw[5].startswith("message 0 (user) is empty: ")
    assert (stats.conversations, stats.rejects) == (3, 6)


def test_alpaca_jsonl_is_the_same_records(tmp_path: Path) -> None:
    records = json.loads((FIXTURES / "alpaca.json").read_text(encoding="utf-8"))
    path = tmp_path / "alpaca.jsonl"
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records[:3]) + "\n", encoding="utf-8"
    )
    turns, rejects, _ = read(path, "alpaca")
    # JSONL ids are line numbers (1-based), array ids positions
    assert rows(turns) == [(f"t:{int(c[2:]) + 1}", *rest) for c, *rest in ALPACA_ROWS]
    assert rejects.is_empty()


def test_alpaca_columns_remapped(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps(
            {"q": "Open on Sunday?", "a": "Yes, 10-18.", "sys": "Be short.", "prev": [["Hi", "Hello"]]}
        )
        + "\n"
        + json.dumps({"instruction": "not this key", "output": "x"})
        + "\n",
        encoding="utf-8",
    )
    columns = {"prompt": "q", "query": None, "response": "a", "system": "sys", "history": "prev"}
    turns, rejects, _ = read(path, "alpaca", columns=columns)
    assert rows(turns) == [
        ("t:1", 0, "system", "Be short.", "en", None),
        ("t:1", 1, "user", "Hi", "en", None),
        ("t:1", 2, "assistant", "Hello", "en", None),
        ("t:1", 3, "user", "Open on Sunday?", "en", None),
        ("t:1", 4, "assistant", "Yes, 10-18.", "en", None),
    ]
    assert reject_rows(rejects) == [(f"{path}:2", "missing_field")]
    assert rejects["raw"][0].startswith("record has keys ['instruction', 'output']; expected 'q' and 'a'")


def test_alpaca_columns_validated() -> None:
    bad = {"sources": [{"path": "a.json", "format": "alpaca", "options": {"columns": {"promt": "q"}}}]}
    with pytest.raises(ParamsError, match="promt"):
        validate_section("ingest", bad, IngestParams)


# ------------------------------------------------------------- OpenAI / ShareGPT as a JSON array
def test_messages_json_array() -> None:
    path = FIXTURES / "messages_array.json"
    turns, rejects, _ = read(path, "messages_jsonl")
    assert rows(turns) == [
        ("t:1", 0, "system", "Be brief.", "zh", None),  # ShareGPT, its system prompt first
        ("t:1", 1, "user", "你好", "zh", None),
        ("t:1", 2, "assistant", "你好！", "zh", None),
        ("t:2", 0, "user", "Mixed keys?", "en", None),  # from/value inside OpenAI "messages"
        ("t:2", 1, "assistant", "Accepted.", "en", None),
        ("t:o1", 0, "user", "Hi", "en", None),
        ("t:o1", 1, "assistant", "Hello there", "en", None),  # text parts joined
    ]
    assert reject_rows(rejects) == [(f"{path}#3", "missing_field"), (f"{path}#4", "missing_field")]
    assert rejects["raw"][0].startswith(
        "\"messages\" message 0 has keys ['who', 'says']; expected a role key (role, from, speaker) "
        "and a content key (content, value, text), or set options.role_key / options.content_key"
    )
    assert rejects["raw"][1] == "record is int, not a JSON object: 42"


def test_messages_folder_reads_json_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes((FIXTURES / "messages_array.json").read_bytes())
    (tmp_path / "b.jsonl").write_bytes((FIXTURES / "openai.jsonl").read_bytes())
    turns, rejects, stats = read(tmp_path, "messages_jsonl")
    assert stats.files == 2
    # records without an id are named by file and position; both files hold an "o1"
    assert sorted(set(turns["conversation_id"])) == ["t:a:1", "t:a:2", "t:b:2", "t:o1"]
    assert reject_rows(rejects) == [
        (f"{tmp_path}/a.json#3", "missing_field"),
        (f"{tmp_path}/a.json#4", "missing_field"),
        (f"{tmp_path}/b.jsonl:1", "duplicate_id"),
    ]


def test_messages_array_malformed(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n{"messages": []},,\n]', encoding="utf-8")
    turns, rejects, _ = read(path, "messages_jsonl")
    assert turns.is_empty() and reject_rows(rejects) == [(f"{path}:2", "malformed_json")]


# -------------------------------------------------------------------------------------- parquet
def test_parquet_messages_column(tmp_path: Path) -> None:
    path = tmp_path / "chats.parquet"
    messages = [
        [
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "It ships today."},
        ],
        [{"role": "user", "content": "查询北京天气"}, {"role": "bot", "content": "今日北京晴"}],
        [{"role": "narrator", "content": "He smiled."}, {"role": "assistant", "content": "ok"}],
        [{"role": "user", "content": None}, {"role": "assistant", "content": "ok"}],
    ]
    _write_parquet({"id": ["a", "b", "c", "d"], "messages": messages}, path)
    turns, rejects, _ = read(path, "parquet")
    assert rows(turns) == [
        ("t:a", 0, "user", "Where is my order?", "en", None),
        ("t:a", 1, "assistant", "It ships today.", "en", None),
        ("t:b", 0, "user", "查询北京天气", "zh", None),
        ("t:b", 1, "assistant", "今日北京晴", "zh", None),
    ]
    assert reject_rows(rejects) == [(f"{path}#2", "unknown_role"), (f"{path}#3", "non_string_content")]


def test_parquet_sharegpt_structs_with_null_keys(tmp_path: Path) -> None:
    """A struct column holds every key of every message: the first key with a value is read."""
    path = tmp_path / "share.parquet"
    conversations = [
        [{"from": "human", "value": "hi", "role": None}, {"from": None, "value": "hello", "role": "gpt"}]
    ]
    _write_parquet({"conversations": conversations}, path)
    turns, rejects, _ = read(path, "parquet")
    assert rows(turns) == [("t:0", 0, "user", "hi", "en", None), ("t:0", 1, "assistant", "hello", "en", None)]
    assert rejects.is_empty()


def test_parquet_question_answer_columns(tmp_path: Path) -> None:
    path = tmp_path / "qa.parquet"
    table = {
        "question": ["Open on Sunday?", "Refund?", "Price?"],
        "answer": ["Yes, 10-18.", "Within 7 days.", None],
        "label": ["hours", None, "price"],
    }
    _write_parquet(table, path)
    options = {"utterance_column": "question", "response_column": "answer", "intent_column": "label"}
    turns, rejects, _ = read(path, "parquet", **options)
    assert rows(turns) == [
        ("t:0", 0, "user", "Open on Sunday?", "en", "hours"),
        ("t:0", 1, "assistant", "Yes, 10-18.", "en", "hours"),
        ("t:1", 0, "user", "Refund?", "en", None),
        ("t:1", 1, "assistant", "Within 7 days.", "en", None),
    ]
    assert reject_rows(rejects) == [(f"{path}#2", "non_string_content")]


def test_parquet_alpaca_columns_and_grouped_exchanges(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.parquet"
    _write_parquet({"instruction": ["Say hi"], "input": ["politely"], "output": ["Hello!"]}, path)
    turns, _, _ = read(path, "parquet")
    assert rows(turns) == [
        ("t:0", 0, "user", "Say hi\npolitely", "en", None),
        ("t:0", 1, "assistant", "Hello!", "en", None),
    ]
    path = tmp_path / "grouped.parquet"
    table = {"dialog": [7, 7, None], "utterance": ["a?", "b?", "c?"], "response": ["A.", "B.", "C."]}
    _write_parquet(table, path)
    turns, rejects, _ = read(path, "parquet", conversation_column="dialog", intent_column=None)
    assert rows(turns) == [
        ("t:7", 0, "user", "a?", "en", None),
        ("t:7", 1, "assistant", "A.", "en", None),
        ("t:7", 2, "user", "b?", "en", None),
        ("t:7", 3, "assistant", "B.", "en", None),
    ]
    assert reject_rows(rejects) == [(f"{path}#2", "missing_field")]


def test_parquet_without_usable_columns_names_them(tmp_path: Path) -> None:
    path = tmp_path / "odd.parquet"
    _write_parquet({"x": [1], "y": [2]}, path)
    with pytest.raises(IngestError) as err:
        read(path, "parquet")
    message = str(err.value)
    assert "its columns are ['x', 'y']" in message
    assert "options.utterance_column = 'utterance'" in message and "options.columns.prompt" in message


def test_parquet_unreadable_file_is_a_reject_beside_good_ones(tmp_path: Path) -> None:
    messages = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    _write_parquet({"messages": messages}, tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not really")
    turns, rejects, _ = read(tmp_path, "parquet")
    assert turns["conversation_id"].unique().to_list() == ["t:a:0"]
    assert reject_rows(rejects) == [(f"{tmp_path}/b.parquet", "unreadable_file")]
    assert rejects["raw"][0].startswith("not a readable parquet file (")


# ----------------------------------------------------------------------------------- hf_dataset
HF_RECORDS = [
    {"id": "h1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"id": "h2", "messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好"}]},
]


def test_hf_dataset_save_to_disk(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(HF_RECORDS).save_to_disk(str(tmp_path / "ds"))
    turns, rejects, _ = read(tmp_path / "ds", "hf_dataset")
    assert rows(turns) == [
        ("t:h1", 0, "user", "Hi", "en", None),
        ("t:h1", 1, "assistant", "Hello", "en", None),
        ("t:h2", 0, "user", "你好", "zh", None),
        ("t:h2", 1, "assistant", "您好", "zh", None),
    ]
    assert rejects.is_empty()


def test_hf_dataset_dict_split_and_mapping(tmp_path: Path) -> None:
    import datasets

    train = datasets.Dataset.from_list([{"q": "Open?", "a": "Yes."}])
    test = datasets.Dataset.from_list(
        [{"dialog": [{"speaker": "customer", "text": "Refund?"}, {"speaker": "clerk", "text": "Sure."}]}]
    )
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    turns, _, _ = read(tmp_path / "dd", "hf_dataset", utterance_column="q", response_column="a")
    assert rows(turns) == [
        ("t:0", 0, "user", "Open?", "en", None),
        ("t:0", 1, "assistant", "Yes.", "en", None),
    ]
    turns, _, _ = read(
        tmp_path / "dd",
        "hf_dataset",
        split="test",
        messages_column="dialog",
        role_key="speaker",
        content_key="text",
        role_map={"clerk": "assistant"},
    )
    assert rows(turns) == [
        ("t:0", 0, "user", "Refund?", "en", None),
        ("t:0", 1, "assistant", "Sure.", "en", None),
    ]
    with pytest.raises(IngestError, match=r"no split 'validation'; its splits are \['test', 'train'\]"):
        read(tmp_path / "dd", "hf_dataset", split="validation")


def test_hf_dataset_data_files(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in HF_RECORDS) + "\n", encoding="utf-8")
    turns, rejects, _ = read(path, "hf_dataset")
    assert turns["conversation_id"].unique(maintain_order=True).to_list() == ["t:h1", "t:h2"]
    assert rejects.is_empty()


def test_hf_dataset_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    # offline mode fails at once; without it a machine without network retries for ~25 s, then fails alike
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(IngestError) as err:
        read("nobody-xyz/no-such-dataset", "hf_dataset")
    message = str(err.value)
    assert message.startswith("ingest.sources[0] (name 't', format hf_dataset): nobody-xyz/no-such-dataset: ")
    assert "could not be loaded" in message and "save_to_disk" in message and "local path" in message
    assert len(message) < 900
    # a path that cannot be a hub id is a missing local path, as for every format
    with pytest.raises(IngestError, match="does not exist"):
        read("data/raw/missing/folder", "hf_dataset")
