"""Ingest: every format on a small fixture (exact rows), real public data, and bad input."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from chatforge.data.ingest import REJECT_REASONS, IngestError, ingest, read_source
from chatforge.data.readers import READER_REJECT_REASONS, _typed_columns
from chatforge.data.schema import TURNS_SCHEMA
from chatforge.io import write_jsonl, write_parquet
from chatforge.params import IngestParams, ParamsError, Source, validate_section

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ingest"
ROOT = Path(__file__).resolve().parents[3]


def read(
    path: Path | str, fmt: str, *, name: str | None = None, **kwargs: Any
) -> tuple[pl.DataFrame, pl.DataFrame, Any]:
    options = kwargs.pop("options", {})
    source = Source(
        path=str(path), format=fmt, name=name, options=options, optional=kwargs.pop("optional", False)
    )
    return read_source(source, **kwargs)


def rows(turns: pl.DataFrame) -> list[tuple[Any, ...]]:
    return turns.select("conversation_id", "turn", "role", "content", "lang", "intent").rows()


def reject_rows(rejects: pl.DataFrame) -> list[tuple[str, str]]:
    return rejects.select("location", "reason").rows()


# ------------------------------------------------------------------------------- every format
def test_conversations_json() -> None:
    turns, rejects, stats = read(FIXTURES / "conversations.json", "conversations_json", name="demo")
    assert rows(turns) == [
        ("demo:conv_001", 0, "user", "查询北京天气", "zh", "weather"),
        ("demo:conv_001", 1, "assistant", "今日北京晴，15-25℃", "zh", "weather"),
        ("demo:conv_002", 0, "system", "You are a helpful shop assistant.", "en", "order_status"),
        ("demo:conv_002", 1, "user", "Where is my order A1234?", "en", "order_status"),
        ("demo:conv_002", 2, "assistant", "It shipped yesterday.", "en", "order_status"),
        ("demo:conv_002", 3, "user", "Thanks!", "en", "order_status"),  # role "User" maps case-insensitively
        ("demo:conv_002", 4, "assistant", "You're welcome.", "en", "order_status"),
        ("demo:conv_003", 0, "user", "我想退货\n订单号是B5678", "zh", None),  # same-role run merged
        ("demo:conv_003", 1, "assistant", "好的，已为您提交退货申请。", "zh", None),
    ]
    assert rejects.is_empty()
    assert (stats.conversations, stats.turns, stats.same_role_merged_messages) == (3, 9, 1)
    assert turns.schema == pl.Schema(TURNS_SCHEMA)
    assert set(turns["method"]) == {"original"} and turns["origin_id"].null_count() == turns.height
    assert set(turns["source"]) == {"demo"}


def test_source_options_lang_and_intent_fill_gaps() -> None:
    turns, _, _ = read(
        FIXTURES / "conversations.json",
        "conversations_json",
        name="demo",
        options={"lang": "en", "intent": "misc"},
    )
    by_conv = dict(
        turns.group_by("conversation_id")
        .agg(pl.col("lang").first(), pl.col("intent").first())
        .select("conversation_id", pl.struct("lang", "intent"))
        .rows()
    )
    # the conversation's own lang/intent win; the source options fill what is missing
    assert by_conv["demo:conv_001"] == {"lang": "zh", "intent": "weather"}
    assert by_conv["demo:conv_003"] == {"lang": "en", "intent": "misc"}


def test_messages_jsonl_openai_and_sharegpt() -> None:
    turns, rejects, _ = read(FIXTURES / "openai.jsonl", "messages_jsonl")
    assert rows(turns) == [
        ("openai:2", 0, "system", "Be brief.", "zh", "refund"),
        ("openai:2", 1, "user", "退款多久到账？", "zh", "refund"),
        ("openai:2", 2, "assistant", "3-5个工作日。", "zh", "refund"),
        ("openai:o1", 0, "user", "Hi there", "en", None),
        ("openai:o1", 1, "assistant", "Hello! How can I help?", "en", None),  # text parts joined
    ]
    assert rejects.is_empty()
    turns, rejects, _ = read(FIXTURES / "sharegpt.jsonl", "messages_jsonl")
    assert rows(turns) == [
        ("sharegpt:s1", 0, "user", "What time do you open?", "en", None),
        ("sharegpt:s1", 1, "assistant", "9am to 9pm every day.", "en", None),
        ("sharegpt:s2", 0, "system", "You are a shop bot.", "en", None),
        ("sharegpt:s2", 1, "user", "Is the blue kettle in stock?", "en", None),
        ("sharegpt:s2", 2, "assistant", "Yes, 12 left.", "en", None),
        ("sharegpt:s2", 3, "user", "Great", "en", None),
        ("sharegpt:s2", 4, "assistant", "Anything else?", "en", None),
    ]
    assert rejects.is_empty()


def test_cornell_latin1_speakers_and_merge() -> None:
    turns, rejects, stats = read(FIXTURES / "cornell", "cornell")
    assert rows(turns) == [
        ("cornell:m0_L1", 0, "user", "Can we make this quick?", "en", None),
        ("cornell:m0_L1", 1, "assistant", "Sure. Café or diner?", "en", None),  # ISO-8859-1 decoded
        ("cornell:m0_L1", 2, "user", "The café.\nNow!", "en", None),  # BIANCA twice in a row: merged
        ("cornell:m0_L1", 3, "assistant", "Okay.", "en", None),
    ]
    assert reject_rows(rejects) == [(f"{FIXTURES / 'cornell'}/movie_conversations.txt:2", "too_few_turns")]
    assert stats.same_role_merged_messages == 1


def test_cornell_bad_lines_and_dangling_ids(tmp_path: Path) -> None:
    folder = tmp_path / "cornell"
    folder.mkdir()
    sep = " +++$+++ "
    (folder / "movie_lines.txt").write_bytes(
        (f"L1{sep}u0{sep}m0{sep}A{sep}Hi.\nL2{sep}u1{sep}m0{sep}B{sep}Hello.\nnot a line at all\n").encode(
            "latin-1"
        )
    )
    (folder / "movie_conversations.txt").write_bytes(
        (
            f"u0{sep}u1{sep}m0{sep}['L1', 'L2']\nu0{sep}u1{sep}m0{sep}['L1', 'L9']\n"
            f"u0{sep}u1{sep}m0{sep}__import__('os').system('true')\n"
        ).encode("latin-1")
    )
    turns, rejects, _ = read(folder, "cornell", name="c")
    assert rows(turns) == [
        ("c:m0_L1", 0, "user", "Hi.", "en", None),
        ("c:m0_L1", 1, "assistant", "Hello.", "en", None),
    ]
    assert [r for _, r in reject_rows(rejects)] == ["malformed_line", "dangling_reference", "malformed_line"]
    assert rejects["location"].to_list()[0].endswith("movie_lines.txt:3")
    assert rejects["location"].to_list()[2].endswith("movie_conversations.txt:3")


def test_cornell_needs_both_files(tmp_path: Path) -> None:
    (tmp_path / "movie_lines.txt").write_text("")
    with pytest.raises(IngestError, match="movie_conversations.txt"):
        read(tmp_path, "cornell")


def test_dailydialog_labels_and_spacing() -> None:
    turns, rejects, _ = read(
        FIXTURES / "dailydialog.txt", "dailydialog", options={"topic_names": {"1": "ordinary_life"}}
    )
    assert rows(turns) == [
        ("dailydialog:1", 0, "user", "Hello , how are you ?", "en", "ordinary_life"),
        ("dailydialog:1", 1, "assistant", "Fine , thanks .", "en", "ordinary_life"),
        ("dailydialog:1", 2, "user", "Good to hear .", "en", "ordinary_life"),
        ("dailydialog:2", 0, "user", "我们去吃饭吧。", "zh", "topic_4"),  # no name given: topic_<n>
        ("dailydialog:2", 1, "assistant", "好啊！", "zh", "topic_4"),
        ("dailydialog:4", 0, "user", "Do you like tea?", "en", None),  # line 3 is blank; no label columns
        ("dailydialog:4", 1, "assistant", "Yes , a lot .", "en", None),
    ]
    assert rejects.is_empty()


def test_crosswoz_roles_and_intents() -> None:
    turns, rejects, _ = read(FIXTURES / "crosswoz.json", "crosswoz")
    assert rows(turns) == [
        ("crosswoz:12", 0, "user", "你好。", "zh", "酒店"),  # a bare greeting carries the conversation intent
        ("crosswoz:12", 1, "assistant", "你好，请问有什么可以帮您？", "zh", "酒店"),
        ("crosswoz:12", 2, "user", "我想找一家酒店，附近有地铁站吗？", "zh", "酒店"),  # first non-General act
        ("crosswoz:12", 3, "assistant", "北京饭店附近有王府井地铁站。", "zh", "酒店"),
        ("crosswoz:12", 4, "user", "谢谢，再见。", "zh", "地铁"),  # keeps the latest topic of the dialogue
        ("crosswoz:12", 5, "assistant", "不客气，再见。", "zh", "酒店"),
        ("crosswoz:7", 0, "user", "你好，帮我推荐一个评分4.5分以上的景点。", "zh", "景点"),
        ("crosswoz:7", 1, "assistant", "推荐您去故宫。", "zh", "景点"),
        ("crosswoz:7", 2, "user", "门票多少钱？", "zh", "景点"),  # no acts: follow-up on the same topic
        ("crosswoz:7", 3, "assistant", "60元。", "zh", "景点"),
    ]
    assert rejects.is_empty()


def test_csv_grouped_by_conversation_column() -> None:
    turns, rejects, _ = read(FIXTURES / "exchanges.csv", "csv", options={"conversation_column": "session"})
    assert rows(turns) == [
        ("exchanges:a", 0, "user", "Hi, where is my parcel?", "en", "order_status"),
        ("exchanges:a", 1, "assistant", "It is on its way, arriving Friday.", "en", "order_status"),
        ("exchanges:a", 2, "user", "Can it come sooner?", "en", "shipping"),  # per-row intent on user turns
        ("exchanges:a", 3, "assistant", "Express delivery costs $5.", "en", "order_status"),
        ("exchanges:b", 0, "user", "我要修改密码", "zh", "account"),
        ("exchanges:b", 1, "assistant", '请点击"忘记密码"。', "zh", "account"),  # CSV quote escaping
    ]
    assert rejects.is_empty()


def test_tsv_column_mapping_one_row_per_conversation() -> None:
    options = {"utterance_column": "question", "response_column": "answer", "intent_column": "label"}
    turns, rejects, _ = read(FIXTURES / "exchanges.tsv", "tsv", options=options)
    assert rows(turns) == [
        ("exchanges:2", 0, "user", "store hours?", "en", "store_hours"),
        ("exchanges:2", 1, "assistant", "We open at 9am.", "en", "store_hours"),
        ("exchanges:3", 0, "user", "营业时间？", "zh", None),
        ("exchanges:3", 1, "assistant", "早上9点开门。", "zh", None),
    ]
    assert rejects.is_empty()


def test_csv_wrong_column_names_is_a_clear_error() -> None:
    with pytest.raises(IngestError) as err:
        read(FIXTURES / "exchanges.tsv", "tsv")
    message = str(err.value)
    assert "options.utterance_column = 'utterance'" in message and "'question'" in message
    assert "ingest.sources[0]" in message


def test_chatterbot_yaml_keeps_scalars_as_text() -> None:
    turns, rejects, _ = read(FIXTURES / "chatterbot.yml", "chatterbot_yaml")
    assert rows(turns) == [
        ("chatterbot:0", 0, "user", "Hello", "en", "greetings"),
        ("chatterbot:0", 1, "assistant", "Hi", "en", "greetings"),
        ("chatterbot:1", 0, "user", "How are you doing?", "en", "greetings"),
        ("chatterbot:1", 1, "assistant", "I am doing well.", "en", "greetings"),
        ("chatterbot:1", 2, "user", "yes", "en", "greetings"),  # not True
        ("chatterbot:1", 3, "assistant", "4", "en", "greetings"),  # not 4
    ]
    assert rejects.is_empty()


def test_feedback_folder() -> None:
    turns, rejects, stats = read(FIXTURES / "feedback", "feedback")
    assert rows(turns) == [
        ("feedback:fb_0001", 0, "user", "查询上海天气", "zh", "weather"),
        ("feedback:fb_0001", 1, "assistant", "上海今天多云。", "zh", "weather"),
        ("feedback:fb_0002", 0, "user", "reset my password", "en", None),
        ("feedback:fb_0002", 1, "assistant", "I sent you a reset link.", "en", None),
    ]
    assert rejects.is_empty() and stats.files == 1


def test_folder_sources_prefix_positional_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("Hi __eou__ Hello __eou__\n", encoding="utf-8")
    (tmp_path / "y.txt").write_text("Hey __eou__ Yo __eou__\n", encoding="utf-8")
    turns, _, stats = read(tmp_path, "dailydialog", name="dd")
    assert sorted(set(turns["conversation_id"])) == ["dd:a/x:1", "dd:y:1"]
    assert stats.files == 2


def test_feedback_requires_an_id(tmp_path: Path) -> None:
    good = {
        "id": "f1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "lang": "en",
    }
    bad = {k: v for k, v in good.items() if k != "id"}
    (tmp_path / "f.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    turns, rejects, _ = read(tmp_path, "feedback", name="fb")
    assert turns["conversation_id"].unique().to_list() == ["fb:f1"]
    assert reject_rows(rejects) == [(f"{tmp_path}/f.jsonl:2", "missing_field")]


# --------------------------------------------------------------------------------- real data
def test_crosswoz_real_test_split(shared_datasets: Path) -> None:
    path = shared_datasets / "crosswoz" / "test.json.zip"
    with zipfile.ZipFile(path) as archive:
        raw = json.loads(archive.read("test.json"))
    # independent counts from the raw JSON: consecutive same-role messages would merge into one turn
    expected_turns = sum(len(list(itertools.groupby(m["role"] for m in d["messages"]))) for d in raw.values())
    domains = {
        act[1] for d in raw.values() for m in d["messages"] for act in m["dialog_act"] if act[0] != "General"
    }
    first_domain = {
        f"crosswoz:{k}": next(
            act[1]
            for m in d["messages"]
            if m["role"] == "usr"
            for act in m["dialog_act"]
            if act[0] != "General"
        )
        for k, d in raw.items()
    }
    turns, rejects, stats = read(path, "crosswoz", name="crosswoz")
    assert len(raw) == 500
    assert rejects.is_empty()
    assert stats.conversations == turns["conversation_id"].n_unique() == 500
    assert stats.turns == turns.height == expected_turns == 8476
    assert set(turns["role"]) == {"user", "assistant"}
    assert turns.filter(pl.col("role") == "user").height == sum(
        m["role"] == "usr" for d in raw.values() for m in d["messages"]
    )
    users = turns.filter(pl.col("role") == "user")
    assert users["intent"].null_count() == 0
    assert set(turns["intent"]) <= domains
    conv_intent = dict(
        turns.filter(pl.col("role") == "assistant")
        .group_by("conversation_id")
        .agg(pl.col("intent").first())
        .rows()
    )
    assert conv_intent == first_domain
    assert set(turns["lang"]) == {"zh"}


@pytest.mark.parametrize(
    ("text_file", "labels_inline", "lang"),
    [
        ("zh_test_human.txt", True, "zh"),
        ("en_test_human.txt", True, "en"),
        ("parallel_1k_dialogues_text_Zh.txt", False, "zh"),
        ("parallel_1k_dialogues_text_En.txt", False, "en"),
    ],
)
def test_xdailydialog_real(shared_datasets: Path, text_file: str, labels_inline: bool, lang: str) -> None:
    folder = shared_datasets / "xdailydialog"
    lines = [ln for ln in (folder / text_file).read_text(encoding="utf-8").split("\n") if ln.strip()]
    if labels_inline:
        # the dataset's own per-utterance act labels give the utterance count of each dialogue
        per_dialogue = [len(ln.split("\t")[2].split()) for ln in lines]
    else:
        # the parallel files' act labels disagree with their text on 6 lines (translation merged
        # utterances), so count the text itself: non-blank pieces between __eou__ markers
        per_dialogue = [sum(1 for u in ln.split("__eou__") if u.strip()) for ln in lines]
        assert len(lines) == 1000
    assert len(per_dialogue) == len(lines)
    turns, rejects, stats = read(folder / text_file, "dailydialog", name="dd")
    assert rejects.is_empty()
    assert stats.conversations == len(lines)
    assert stats.turns == turns.height == sum(per_dialogue)
    got = dict(turns.group_by("conversation_id").len().rows())
    assert [got[f"dd:{i}"] for i in range(1, len(lines) + 1)] == per_dialogue
    assert not turns["content"].str.contains("__eou__").any()
    assert (turns["content"].str.strip_chars() == turns["content"]).all()
    assert set(turns["lang"]) == {lang}
    if labels_inline:
        topics = {f"topic_{ln.split(chr(9))[1].strip()}" for ln in lines}
        assert set(turns["intent"]) == topics
    # alternate speakers: even turns are the user
    assert turns.filter(
        pl.col("role") != pl.when(pl.col("turn") % 2 == 0).then(pl.lit("user")).otherwise(pl.lit("assistant"))
    ).is_empty()


# -------------------------------------------------------------------------------- bad input
def _conv(cid: str, *messages: tuple[Any, Any], **extra: Any) -> dict[str, Any]:
    return {"id": cid, "messages": [{"role": r, "content": c} for r, c in messages], **extra}


GOOD = _conv("good", ("user", "Where is my order?"), ("assistant", "It ships today."))


def _json_source(tmp_path: Path, *conversations: dict[str, Any]) -> Path:
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps({"conversations": list(conversations)}, ensure_ascii=False), encoding="utf-8")
    return path


def _assert_good_kept(turns: pl.DataFrame, cid: str = "t:good") -> None:
    assert rows(turns.filter(pl.col("conversation_id") == cid)) == [
        (cid, 0, "user", "Where is my order?", "en", None),
        (cid, 1, "assistant", "It ships today.", "en", None),
    ]


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    lines = [
        json.dumps(GOOD),
        '{"messages": [{"role": "user", "content": "hi"}',
        json.dumps({**GOOD, "id": "good2"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    turns, rejects, stats = read(path, "messages_jsonl", name="t")
    assert reject_rows(rejects) == [(f"{path}:2", "malformed_json")]
    assert rejects["raw"][0].endswith('{"messages": [{"role": "user", "content": "hi"}')
    _assert_good_kept(turns)
    _assert_good_kept(turns, "t:good2")
    assert (stats.conversations, stats.rejects) == (2, 1)


def test_malformed_json_document(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"conversations": [\n{"id": 1,,}\n]}', encoding="utf-8")
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert turns.is_empty()
    assert reject_rows(rejects) == [(f"{path}:2", "malformed_json")]


def test_unknown_role(tmp_path: Path) -> None:
    bad = _conv("bad", ("user", "hi"), ("narrator", "He smiled."))
    path = _json_source(tmp_path, GOOD, bad)
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert reject_rows(rejects) == [(f"{path}#bad", "unknown_role")]
    assert "'narrator'" in rejects["raw"][0] and "options.role_map" in rejects["raw"][0]
    _assert_good_kept(turns)
    # the fix the message suggests works
    turns, rejects, _ = read(
        path, "conversations_json", name="t", options={"role_map": {"Narrator": "assistant"}}
    )
    assert rejects.is_empty() and turns.filter(pl.col("conversation_id") == "t:bad")["role"].to_list() == [
        "user",
        "assistant",
    ]


@pytest.mark.parametrize("content", ["", "   \n\t"])
def test_empty_content(tmp_path: Path, content: str) -> None:
    path = _json_source(tmp_path, _conv("bad", ("user", "hi"), ("assistant", content)), GOOD)
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert reject_rows(rejects) == [(f"{path}#bad", "empty_content")]
    _assert_good_kept(turns)


@pytest.mark.parametrize("content", [42, None, {"text": "hi"}, ["a", "b"], True])
def test_non_string_content(tmp_path: Path, content: Any) -> None:
    path = _json_source(tmp_path, GOOD, _conv("bad", ("user", content), ("assistant", "ok")))
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert reject_rows(rejects) == [(f"{path}#bad", "non_string_content")]
    _assert_good_kept(turns)


def test_wrong_encoding_lines_rejected_good_lines_kept(tmp_path: Path) -> None:
    path = tmp_path / "gbk.jsonl"
    zh = _conv("zh", ("user", "查询北京天气"), ("assistant", "今日北京晴"))
    path.write_bytes((json.dumps(GOOD) + "\n" + json.dumps(zh, ensure_ascii=False) + "\n").encode("gbk"))
    turns, rejects, _ = read(path, "messages_jsonl", name="t")
    assert reject_rows(rejects) == [(f"{path}:2", "bad_encoding")]
    assert "options.encoding" in rejects["raw"][0] and "utf-8" in rejects["raw"][0]
    _assert_good_kept(turns)
    # with the right encoding both lines read
    turns, rejects, _ = read(path, "messages_jsonl", name="t", options={"encoding": "gbk"})
    assert rejects.is_empty()
    assert turns.filter(pl.col("conversation_id") == "t:zh")["content"].to_list() == [
        "查询北京天气",
        "今日北京晴",
    ]


def test_wrong_encoding_in_json_document(tmp_path: Path) -> None:
    zh = _conv("zh", ("user", "查询北京天气"), ("assistant", "今日北京晴"))
    path = tmp_path / "gbk.json"
    path.write_bytes(json.dumps({"conversations": [GOOD, zh]}, ensure_ascii=False).encode("gbk"))
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert reject_rows(rejects) == [(f"{path}#zh", "bad_encoding")]
    _assert_good_kept(turns)


def test_wrong_encoding_yaml_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_bytes("categories: [chat]\nconversations:\n- - 你好\n  - 你好！\n".encode("gbk"))
    turns, rejects, _ = read(path, "chatterbot_yaml", name="t")
    assert turns.is_empty() and reject_rows(rejects) == [(f"{path}:3", "bad_encoding")]


# A lone surrogate escape ("\ud800", half of a UTF-16 pair) is valid JSON/YAML in a valid UTF-8 file,
# but json.loads and YAML turn it into a str no UTF-8 table can hold; json.dumps writes one that way.
LONE_HINT = "message 0 content holds \\ud800, half of a UTF-16 surrogate pair (a broken escape)"


def _surrogate_file(tmp_path: Path, fmt: str) -> tuple[Path, str, str]:
    """GOOD and a conversation whose first message has a lone surrogate escape, as a `fmt` file:
    (path, the bad conversation's reject location, the good one's conversation id)."""
    bad = _conv("bad", ("user", "bad \ud800 text"), ("assistant", "ok"))
    if fmt == "conversations_json":
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"conversations": [bad, GOOD]}), encoding="utf-8")
        return path, f"{path}#bad", "t:good"
    if fmt in ("messages_jsonl", "feedback"):
        path = tmp_path / "c.jsonl"
        path.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
        return path, f"{path}:2", "t:good"
    if fmt == "crosswoz":
        path = tmp_path / "w.json"
        doc = {
            conv["id"]: {"messages": [{**m, "dialog_act": []} for m in conv["messages"]]}
            for conv in (bad, GOOD)
        }
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path, f"{path}#bad", "t:good"
    path = tmp_path / "c.yml"  # chatterbot_yaml: a double-quoted YAML scalar takes the same escape
    path.write_text(
        'conversations:\n- - "bad \\ud800 text"\n  - ok\n- - Where is my order?\n  - It ships today.\n',
        encoding="utf-8",
    )
    return path, f"{path}#0", "t:1"


@pytest.mark.parametrize(
    "fmt", ["conversations_json", "messages_jsonl", "feedback", "crosswoz", "chatterbot_yaml"]
)
def test_lone_surrogate_escape_is_a_bad_encoding_reject(tmp_path: Path, fmt: str) -> None:
    path, location, good_id = _surrogate_file(tmp_path, fmt)
    assert "\\ud800" in path.read_text(encoding="utf-8")  # the file spells the escape, in valid UTF-8
    turns, rejects, stats = _both_paths({"path": str(path), "format": fmt, "name": "t"})
    assert reject_rows(rejects) == [(location, "bad_encoding")]
    raw = rejects["raw"][0]
    assert raw.startswith(LONE_HINT) and "repair or remove it" in raw
    assert "bad \\ud800 text" in raw  # the raw prefix shows the escape as text
    _assert_good_kept(turns, good_id)
    assert (stats.conversations, stats.rejects) == (1, 1)
    # both outputs are writable as the stage writes them
    write_parquet(turns, tmp_path / "out" / "turns.parquet")
    write_jsonl(rejects.iter_rows(named=True), tmp_path / "out" / "rejects.jsonl")
    written = json.loads((tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8"))
    assert written["raw"] == raw


def test_lone_surrogate_in_any_text_field(tmp_path: Path) -> None:
    base = GOOD["messages"]
    conversations = [
        {"id": "id\ud800", "messages": base},
        {"id": "intent", "messages": base, "intent": "refund\udfff"},
        {"id": "lang", "messages": base, "lang": "e\udbffn"},
        _conv("role", ("user", "hi"), ("assist\ud800ant", "ok")),
        _conv("lenient_range", ("user", "hi"), ("assistant", "ok \udc80")),
        # a surrogate where nothing reads it: the conversation is rejected for its empty message,
        # and its raw prefix shows the surrogate escaped
        _conv("empty", ("user", " "), ("assistant", "ok"), note="\ud800"),
        _conv("unused", ("user", "hi"), ("assistant", "ok"), note="\ud800"),  # kept
        _conv("pair", ("user", "ok \U0001f600"), ("assistant", "fine")),  # an escaped pair is one emoji
        GOOD,
    ]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"conversations": conversations}), encoding="utf-8")
    turns, rejects, _ = _both_paths({"path": str(path), "format": "conversations_json", "name": "t"})
    assert rejects.select("location", "reason").rows() == [
        (f"{path}#id\\ud800", "bad_encoding"),
        (f"{path}#intent", "bad_encoding"),
        (f"{path}#lang", "bad_encoding"),
        (f"{path}#role", "bad_encoding"),
        (f"{path}#lenient_range", "bad_encoding"),
        (f"{path}#empty", "empty_content"),
    ]
    raws = rejects["raw"].to_list()
    starts = [
        "id holds \\ud800, ",
        "intent holds \\udfff, ",
        "lang holds \\udbff, ",
        "message 1 role holds \\ud800, ",
        "message 1 content holds \\udc80: ",
    ]
    assert [raw[: len(start)] for raw, start in zip(raws, starts, strict=False)] == starts
    # U+DC80..U+DCFF is also where a mis-decoded byte lands: the hint names the encoding option too
    assert "set options.encoding" in raws[4] and "repair or remove it" in raws[4]
    assert '"note": "\\ud800"' in raws[5]
    assert sorted(set(turns["conversation_id"])) == ["t:good", "t:pair", "t:unused"]
    assert turns.filter(pl.col("conversation_id") == "t:pair")["content"].to_list() == [
        "ok \U0001f600",
        "fine",
    ]
    _assert_good_kept(turns)


def test_lone_surrogate_in_per_turn_intents(tmp_path: Path) -> None:
    # CrossWOZ: each user turn's intent comes from its dialogue act and lands in the intent column
    def turn(role: str, content: str, domain: str) -> dict[str, Any]:
        return {"role": role, "content": content, "dialog_act": [["Inform", domain, "名称", ""]]}

    bad = [
        turn("usr", "hotel?", "酒店"),
        turn("sys", "ok", "酒店"),
        turn("usr", "and?", "景点\ud800"),
        turn("sys", "ok", ""),
    ]
    doc = {
        "bad": {"messages": bad},
        "good": {"messages": [{**m, "dialog_act": []} for m in GOOD["messages"]]},
    }
    path = tmp_path / "w.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    turns, rejects, _ = _both_paths({"path": str(path), "format": "crosswoz", "name": "t"})
    assert reject_rows(rejects) == [(f"{path}#bad", "bad_encoding")]
    assert rejects["raw"][0].startswith("message 2 intent holds \\ud800")
    _assert_good_kept(turns)
    # CSV read as UTF-8 but written in GBK: undecodable bytes in the intent column only
    path = tmp_path / "x.csv"
    path.write_bytes(
        "utterance,response,intent\nhi,hello,天气\nWhere is my order?,It ships today.,\n".encode("gbk")
    )
    turns, rejects, _ = _both_paths({"path": str(path), "format": "csv", "name": "t"})
    assert reject_rows(rejects) == [(f"{path}:2", "bad_encoding")]
    assert rejects["raw"][0].startswith("message 0 intent holds \\udccc: a byte that is not valid utf-8")
    _assert_good_kept(turns, "t:3")


def test_unknown_encoding_name_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match="unknown encoding 'utf-9'"):
        validate_section(
            "ingest",
            {"sources": [{"path": "x", "format": "csv", "options": {"encoding": "utf-9"}}]},
            IngestParams,
        )


def test_missing_source_path_names_source_and_key(tmp_path: Path) -> None:
    params = IngestParams(
        sources=[{"path": "data/raw/nowhere.json", "format": "conversations_json", "name": "demo"}]
    )
    with pytest.raises(IngestError) as err:
        ingest(params, base_dir=tmp_path)
    message = str(err.value)
    assert "data/raw/nowhere.json" in message and "'demo'" in message
    assert "ingest.sources[0].path" in message and "optional: true" in message


def test_optional_missing_source_is_counted(tmp_path: Path) -> None:
    _json_source(tmp_path, GOOD)
    params = IngestParams(
        sources=[
            {"path": "conversations.json", "format": "conversations_json", "name": "t"},
            {"path": "feedback", "format": "feedback", "optional": True},
        ]
    )
    result = ingest(params, base_dir=tmp_path)
    _assert_good_kept(result.turns)
    metrics = result.metrics()
    assert metrics["missing_optional_sources"] == 1
    assert metrics["sources"]["feedback"] == {
        "conversations": 0,
        "turns": 0,
        "rejects": 0,
        "files": 0,
        "missing": 1,
        "same_role_merged_messages": 0,
        "same_role_dropped_conversations": 0,
        "skipped_files": {"symlinked_folder": 0, "unsupported_file": 0, "broken_link": 0, "hidden_file": 0},
    }


def test_unknown_format_lists_allowed_formats() -> None:
    with pytest.raises(ParamsError) as err:
        validate_section("ingest", {"sources": [{"path": "x.jsonl", "format": "jsonlines"}]}, IngestParams)
    message = str(err.value)
    assert "ingest.sources.0.format" in message and "'jsonlines'" in message
    for fmt in (
        "conversations_json",
        "messages_jsonl",
        "cornell",
        "dailydialog",
        "crosswoz",
        "csv",
        "tsv",
        "chatterbot_yaml",
        "feedback",
    ):
        assert fmt in message


def test_duplicate_source_names_are_a_params_error() -> None:
    with pytest.raises(ParamsError, match="distinct `name`"):
        validate_section(
            "ingest",
            {"sources": [{"path": "a/x.csv", "format": "csv"}, {"path": "b/x.csv", "format": "csv"}]},
            IngestParams,
        )


def test_too_few_turns(tmp_path: Path) -> None:
    path = _json_source(
        tmp_path,
        _conv("one", ("user", "hello?")),
        _conv("users_only", ("user", "a"), ("user", "b")),  # merges into one message
        _conv("system_and_user", ("system", "be nice"), ("user", "hi")),
        GOOD,
    )
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert reject_rows(rejects) == [
        (f"{path}#one", "too_few_turns"),
        (f"{path}#users_only", "too_few_turns"),
        (f"{path}#system_and_user", "too_few_turns"),
    ]
    _assert_good_kept(turns)
    assert turns["conversation_id"].unique().to_list() == ["t:good"]


def test_min_turns_param(tmp_path: Path) -> None:
    path = _json_source(
        tmp_path, GOOD, _conv("four", ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    )
    turns, rejects, _ = read(path, "conversations_json", name="t", min_turns=3)
    assert reject_rows(rejects) == [(f"{path}#good", "too_few_turns")]
    assert turns["conversation_id"].unique().to_list() == ["t:four"]


def test_same_role_merge_and_drop(tmp_path: Path) -> None:
    runs = _conv(
        "runs", ("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"), ("assistant", "e")
    )
    path = _json_source(tmp_path, runs, GOOD)
    turns, rejects, stats = read(path, "conversations_json", name="t", merge_separator=" / ")
    assert rows(turns.filter(pl.col("conversation_id") == "t:runs")) == [
        ("t:runs", 0, "user", "a / b", "en", None),
        ("t:runs", 1, "assistant", "c / d / e", "en", None),
    ]
    assert (stats.same_role_merged_messages, stats.same_role_dropped_conversations) == (3, 0)
    assert rejects.is_empty()
    turns, rejects, stats = read(path, "conversations_json", name="t", same_role="drop_conversation")
    assert reject_rows(rejects) == [(f"{path}#runs", "same_role_sequence")]
    assert (stats.same_role_merged_messages, stats.same_role_dropped_conversations) == (0, 1)
    _assert_good_kept(turns)


def test_misplaced_system_duplicate_id_and_unsupported_lang(tmp_path: Path) -> None:
    path = _json_source(
        tmp_path,
        GOOD,
        _conv("sys", ("user", "hi"), ("system", "rules"), ("assistant", "ok")),
        {**GOOD, "messages": [{"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]},
        _conv("fr", ("user", "bonjour"), ("assistant", "salut"), lang="fr"),
        _conv("cn", ("user", "hello"), ("assistant", "hi"), lang="zh-CN"),
    )
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert reject_rows(rejects) == [
        (f"{path}#sys", "misplaced_system"),
        (f"{path}#good", "duplicate_id"),
        (f"{path}#fr", "unsupported_lang"),
    ]
    _assert_good_kept(turns)
    assert set(turns.filter(pl.col("conversation_id") == "t:cn")["lang"]) == {
        "zh"
    }  # zh-CN -> zh, declared wins


def test_missing_messages_field(tmp_path: Path) -> None:
    path = _json_source(tmp_path, GOOD, {"id": "x", "turns": []}, "not an object")
    turns, rejects, _ = read(path, "conversations_json", name="t")
    assert reject_rows(rejects) == [(f"{path}#x", "missing_field"), (f"{path}#2", "missing_field")]
    _assert_good_kept(turns)


def test_limit_reads_at_most_n(tmp_path: Path) -> None:
    path = _json_source(tmp_path, *({**GOOD, "id": f"c{i}"} for i in range(5)))
    turns, _, stats = read(path, "conversations_json", name="t", options={"limit": 2})
    assert turns["conversation_id"].unique().sort().to_list() == ["t:c0", "t:c1"] and stats.conversations == 2


# ---------------------------------------------------------------------- whole stage + metrics
def _all_fixture_params() -> IngestParams:
    return IngestParams(
        sources=[
            {"path": str(FIXTURES / "conversations.json"), "format": "conversations_json", "name": "demo"},
            {"path": str(FIXTURES / "cornell"), "format": "cornell"},
            {"path": str(FIXTURES / "crosswoz.json"), "format": "crosswoz"},
            {"path": str(FIXTURES / "feedback"), "format": "feedback"},
        ]
    )


def test_ingest_metrics_and_sorted_unique_ids() -> None:
    result = ingest(_all_fixture_params())
    metrics = result.metrics()
    assert (metrics["conversations"], metrics["turns"], metrics["rejects"]) == (8, 27, 1)
    assert metrics["same_role_merged_messages"] == 2
    assert metrics["rejects_by_reason"] == {r: int(r == "too_few_turns") for r in REJECT_REASONS}
    assert metrics["sources"]["crosswoz"]["turns"] == 10 and metrics["sources"]["cornell"]["rejects"] == 1
    assert metrics["conversations_by_lang"] == {"en": 3, "zh": 5}
    turns = result.turns
    assert turns.equals(turns.sort(["conversation_id", "turn"]))
    assert turns.select("conversation_id", "turn").is_unique().all()
    json.dumps(metrics)  # plain JSON for dvc metrics


def test_two_runs_write_identical_parquet(tmp_path: Path) -> None:
    write_parquet(ingest(_all_fixture_params()).turns, tmp_path / "a.parquet")
    write_parquet(ingest(_all_fixture_params()).turns, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def _run_stage(cwd: Path, params_text: str) -> subprocess.CompletedProcess[str]:
    (cwd / "params.yaml").write_text(params_text, encoding="utf-8")
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "stages" / "ingest.py"),
            "out/turns.parquet",
            "out/rejects.jsonl",
            "out/ingest.json",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_stage_script_end_to_end(tmp_path: Path) -> None:
    done = _run_stage(
        tmp_path, f"ingest:\n  sources:\n    - {{path: {FIXTURES / 'cornell'}, format: cornell}}\n"
    )
    assert done.returncode == 0, done.stderr
    turns = pl.read_parquet(tmp_path / "out" / "turns.parquet")
    assert turns.height == 4 and turns.schema == pl.Schema(TURNS_SCHEMA)
    rejects = [json.loads(ln) for ln in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["reason"]) for r in rejects] == [("cornell", "too_few_turns")]
    metrics = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert (metrics["conversations"], metrics["turns"], metrics["rejects"]) == (1, 4, 1)


@pytest.mark.parametrize(
    ("params_text", "expected"),
    [
        (
            "ingest:\n  sources: [{path: x.json, format: conversations_json}]\n  same_rol: merge\n",
            "ingest.same_rol: unknown key",
        ),
        (
            "ingest:\n  sources: [{path: x.json, format: conversations_json}]\n  min_turns: two\n",
            "ingest.min_turns = 'two'",
        ),
        ("ingest:\n  sources: [{path: x.json, format: json}]\n", "ingest.sources.0.format = 'json'"),
    ],
)
def test_stage_script_bad_params(tmp_path: Path, params_text: str, expected: str) -> None:
    done = _run_stage(tmp_path, params_text)
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_stage_script_missing_source(tmp_path: Path) -> None:
    done = _run_stage(
        tmp_path, "ingest:\n  sources: [{path: data/raw/x.json, format: conversations_json, name: demo}]\n"
    )
    assert done.returncode == 2  # bad input
    assert "data/raw/x.json" in done.stderr and "ingest.sources[0].path" in done.stderr
    assert "Traceback" not in done.stderr


def test_xdailydialog_parallel_files_stay_aligned(shared_datasets: Path) -> None:
    folder = shared_datasets / "xdailydialog"
    zh, _, _ = read(folder / "parallel_1k_dialogues_text_Zh.txt", "dailydialog", name="p")
    en, _, _ = read(folder / "parallel_1k_dialogues_text_En.txt", "dailydialog", name="p")
    # same ids and turn structure line by line, so the pairs can serve as a translation reference
    assert zh.select("conversation_id", "turn", "role").equals(en.select("conversation_id", "turn", "role"))
    assert set(zh["lang"]) == {"zh"} and set(en["lang"]) == {"en"}


# ------------------------------------------------------- column-wise path == row-wise reference
def _both_paths(source: dict[str, Any], **kwargs: Any) -> tuple[Any, Any]:
    """read_source column-wise (the default) and message by message; asserts they agree exactly."""
    fast = read_source(Source(**source), **kwargs)
    slow = read_source(Source(**source), vectorised=False, **kwargs)
    assert fast[0].equals(slow[0]), "turns differ"
    assert fast[1].equals(slow[1]), "rejects differ"
    assert fast[2] == slow[2], "stats differ"
    return fast


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"same_role": "drop_conversation"}, {"min_turns": 4, "merge_separator": " | "}],
)
def test_vectorised_matches_row_wise_on_demo_corpus(kwargs: dict[str, Any]) -> None:
    path = ROOT / "data" / "raw" / "demo" / "conversations.json"
    source = {"path": str(path), "format": "conversations_json", "name": "demo"}
    turns, rejects, stats = _both_paths(source, **kwargs)
    assert stats.conversations > 2000 and turns.height == stats.turns
    assert not rejects.is_empty()  # the demo corpus carries deliberately broken conversations


def _messy_conversations() -> list[Any]:
    conv = _conv
    return [
        GOOD,
        conv("unknown", ("user", "hi"), ("narrator", "He smiled.")),
        conv("null_role", ("user", "hi"), (None, "x")),
        conv("empty", ("user", "hi"), ("assistant", "")),
        conv("spaces", ("user", "\u3000\x1c \t"), ("assistant", "ok")),  # whitespace to str.strip()
        conv("not_space", ("user", "\u200b"), ("assistant", "ok")),  # zero-width space is no whitespace
        conv("int_content", ("user", 42), ("assistant", "ok")),
        conv("null_content", ("user", None), ("assistant", "ok")),
        conv("list_content", ("user", ["a"]), ("assistant", "ok")),
        conv("sys_late", ("user", "hi"), ("system", "rules"), ("assistant", "ok")),
        conv("sys_twice", ("system", "a"), ("system", "b"), ("user", "hi"), ("assistant", "ok")),
        conv("runs", ("user", "a"), ("User", "b"), ("assistant", "c"), ("assistant", "d"), ("user", "e")),
        conv("one", ("user", "hello?")),
        conv("none"),
        conv("sys_user", ("system", "s"), ("user", "u")),
        conv("good"),  # a duplicate id, but rejected first for too few turns
        {**GOOD, "messages": [{"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]},
        conv("fr", ("user", "bonjour"), ("assistant", "salut"), lang="fr"),
        conv("cn", ("user", "hello"), ("assistant", "hi"), lang="zh_CN"),
        conv("detect", ("user", "我想退货"), ("assistant", "好的 OK")),
        conv("blank_intent", ("user", "a"), ("assistant", "b"), intent="  "),
        conv("num_intent", ("user", "a"), ("assistant", "b"), intent=7),
        conv("list_intent", ("user", "a"), ("assistant", "b"), intent=["x"]),
        {"id": 17, "messages": GOOD["messages"]},
        {"id": "", "messages": GOOD["messages"]},
        {"id": True, "messages": GOOD["messages"]},
        {"id": 1.5, "messages": GOOD["messages"]},
        {"id": 10**30, "messages": GOOD["messages"]},
        {"messages": GOOD["messages"], "extra": {"nested": [1, None]}},
        {"id": "no_messages", "turns": []},
        {"id": "bad_messages", "messages": ["hi", "there"]},
        "not an object",
        conv("last", ("assistant", "I open"), ("user", "ok"), ("assistant", "bye")),
    ]


def _text_fields_only(conv: Any) -> bool:
    text = (str, type(None))
    return (
        isinstance(conv, dict)
        and isinstance(conv.get("id"), (str, int, type(None)))
        and not isinstance(conv.get("id"), bool)
        and conv.get("id") != 10**30
        and isinstance(conv.get("intent"), text)
        and isinstance(conv.get("lang"), text)
        and (
            conv.get("messages") is None
            or all(
                isinstance(m, dict) and isinstance(m.get("role"), text) and isinstance(m.get("content"), text)
                for m in conv["messages"]
            )
        )
    )


@pytest.mark.parametrize("same_role", ["merge", "drop_conversation"])
@pytest.mark.parametrize(
    "layout",
    ["object", "typed", "list", "bom", "nan", "gbk", "folder", "malformed", "limit", "options", "surrogate"],
)
def test_vectorised_matches_row_wise_on_bad_input(tmp_path: Path, layout: str, same_role: str) -> None:
    conversations = _messy_conversations()
    typed_layouts = ("typed", "list", "limit", "options")
    if layout in typed_layouts:  # only text (or null) where text belongs: read without json.loads
        conversations = [c for c in conversations if _text_fields_only(c)]
    if layout == "nan":  # NaN is read by json.loads only: the other parser defers to it
        conversations.append({"id": "nan", "messages": GOOD["messages"], "score": float("nan")})
    if layout == "surrogate":  # lone surrogate escapes (msgspec refuses them, json.loads does not)
        conversations += [
            _conv("lone", ("user", "bad \ud800 text"), ("assistant", "ok")),
            _conv("lone_empty", ("user", "hi"), ("assistant", ""), intent="x\udc80"),
            _conv("pair", ("user", "ok \U0001f600"), ("assistant", "fine"), note="\udfff"),
        ]
    doc: Any = conversations if layout == "list" else {"conversations": conversations}
    # ASCII-only JSON for "surrogate": every non-ASCII character is an escape, emoji a surrogate pair
    text = json.dumps(doc, ensure_ascii=layout == "surrogate")
    path = tmp_path / "c.json"
    options: dict[str, Any] = {}
    if layout == "bom":
        text = "\ufeff" + text
    if layout == "malformed":
        text = text[:-5]
    if layout == "gbk":  # mis-encoded: decoded leniently, judged message by message
        path.write_bytes(text.encode("gbk", errors="replace"))
    else:
        path.write_text(text, encoding="utf-8")
    if layout == "folder":  # ids repeat across the files of one source
        (tmp_path / "b").mkdir()
        path.rename(tmp_path / "b" / "x.json")
        _json_source(tmp_path / "b", GOOD, _conv("tail", ("user", "a"), ("assistant", "b")))
        path = tmp_path / "b"
    if layout == "limit":
        options = {"limit": 20}
    if layout == "options":
        options = {"lang": "zh", "intent": "misc", "role_map": {"Narrator": "assistant", "bot ": "user"}}
    source = {"path": str(path), "format": "conversations_json", "name": "t", "options": options}
    turns, rejects, _ = _both_paths(source, same_role=same_role)
    data = path.read_bytes() if path.is_file() else b""
    options_model = Source(**source).options
    typed = _typed_columns(data, options=options_model, label="", id_prefix="", max_items=None)
    assert (typed is not None) == (layout in typed_layouts)
    if layout in ("object", "typed", "list", "bom", "nan", "folder", "surrogate"):
        _assert_good_kept(turns)
        unreachable = {
            "malformed_json",
            "malformed_yaml",
            "malformed_line",
            "bad_encoding",
            "dangling_reference",
            "unreadable_file",
            *READER_REJECT_REASONS,
        }
        if same_role == "merge":
            unreachable.add("same_role_sequence")
        if layout == "surrogate":
            unreachable.remove("bad_encoding")
            bad = rejects.filter(pl.col("reason") == "bad_encoding")["location"].to_list()
            assert bad == [f"{path}#lone", f"{path}#lone_empty"]  # surrogates come before the empty message
            assert turns.filter(pl.col("conversation_id") == "t:pair")["content"].to_list() == [
                "ok \U0001f600",
                "fine",
            ]
        assert set(rejects["reason"]) == set(REJECT_REASONS) - unreachable


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_matches_row_wise_on_random_conversations(tmp_path: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)
    roles = ["user", "assistant", "system", "User", " BOT ", "narrator", None, 3]
    contents = ["hi", "你好", "OK 好的", "", " ", "\u3000", "\x1f", "a\nb", 5, None, True]
    conversations = [
        {
            **({"id": rng.choice(["a", "b", "c", 7, "", None])} if rng.random() < 0.9 else {}),
            **({"lang": rng.choice(["zh", "en", "EN-us", "de", None, 3])} if rng.random() < 0.5 else {}),
            **({"intent": rng.choice(["x", " y ", "", None])} if rng.random() < 0.5 else {}),
            "messages": [
                {
                    "role": rng.choices(roles, weights=[8, 8, 2, 1, 1, 1, 1, 1])[0],
                    "content": rng.choices(contents, weights=[8, 8, 4, 1, 1, 1, 1, 1, 1, 1, 1])[0],
                }
                for _ in range(rng.randrange(0, 7))
            ],
        }
        for _ in range(400)
    ]
    typed = [c for c in conversations if _text_fields_only(c)]
    for records in (conversations, typed):
        path = _json_source(tmp_path, *records)
        for kwargs in ({}, {"same_role": "drop_conversation"}, {"min_turns": 3}):
            _both_paths({"path": str(path), "format": "conversations_json", "name": "r"}, **kwargs)
    # the same records as JSONL lines go through the column-wise checks of every other format
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(c) + "\n" for c in conversations), encoding="utf-8")
    _both_paths({"path": str(jsonl), "format": "messages_jsonl"})


@pytest.mark.parametrize(
    ("path", "fmt", "options"),
    [
        ("openai.jsonl", "messages_jsonl", {}),
        ("sharegpt.jsonl", "messages_jsonl", {}),
        ("feedback", "feedback", {}),
        ("cornell", "cornell", {}),
        ("dailydialog.txt", "dailydialog", {}),
        ("crosswoz.json", "crosswoz", {}),
        ("exchanges.csv", "csv", {"conversation_column": "session"}),
        ("chatterbot.yml", "chatterbot_yaml", {}),
    ],
)
def test_vectorised_matches_row_wise_on_every_format(path: str, fmt: str, options: dict[str, Any]) -> None:
    _both_paths({"path": str(FIXTURES / path), "format": fmt, "options": options})
