"""clean: Chinese text is treated as Chinese wherever it stands (issue 15 item 5), with the official
OpenCC converter as the t2s oracle (issue 14 item 6)."""

from __future__ import annotations

from pathlib import Path

import opencc
import polars as pl
import pytest

from chatforge.data.clean import (
    chinese_turns,
    clean_turns,
    normalize_width,
    protect_near_han,
    simplify_chinese,
)
from chatforge.data.ingest import read_source
from chatforge.data.lang import to_simplified
from chatforge.data.schema import TURNS_SCHEMA
from chatforge.params import CleanParams, Source

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "clean"
T2S = opencc.OpenCC("t2s").convert  # the oracle: the official converter, called directly
EXAMPLE = "可以說：「非常感謝你的幫助！」"


def sentences() -> list[str]:
    lines = (FIXTURES / "traditional_sentences.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def turns_frame(*conversations: tuple[str, str, list[str]]) -> pl.DataFrame:
    """(conversation_id, lang label, texts) -> a canonical turns table."""
    rows = [
        {
            "conversation_id": cid,
            "turn": i,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": text,
            "lang": lang,
            "intent": None,
            "source": "unit",
            "origin_id": None,
            "method": "original",
        }
        for cid, lang, texts in conversations
        for i, text in enumerate(texts)
    ]
    return pl.DataFrame(rows, schema=TURNS_SCHEMA)


def clean(turns: pl.DataFrame, **params) -> list[str]:
    settings = {"dedup_exact": False, "dedup_near": False, "min_chars": 0} | params
    out, _ = clean_turns(turns, params=CleanParams(**settings))
    return out["content"].to_list()


# ------------------------------------------------------------------------ t2s: the official oracle
def test_to_simplified_is_the_official_opencc_t2s():
    texts = sentences()
    assert [to_simplified(t) for t in texts] == [T2S(t) for t in texts]
    assert to_simplified(EXAMPLE) == "可以说：「非常感谢你的帮助！」"
    # phrases before characters, script not vocabulary
    assert to_simplified("頭髮 乾燥 著作 雲計算 軟體") == "头发 干燥 著作 云计算 软体"
    assert to_simplified("") == ""
    assert to_simplified("Hello, 世界 😀 123") == "Hello, 世界 😀 123"


@pytest.mark.parametrize("label", ["zh", "en"])
def test_clean_t2s_equals_opencc_on_traditional_sentences_under_any_label(label):
    texts = sentences()
    turns = turns_frame(*((f"c{i:03d}", label, [t, "ok"]) for i, t in enumerate(texts)))
    out = clean(turns, traditional_to_simplified=True)
    assert out[0::2] == [T2S(t) for t in texts]


def test_simplify_chinese_converts_han_in_any_row_and_each_distinct_text_once():
    texts = ["頭髮", "What does 謝謝 mean?", "plain English", "頭髮", ""]
    assert simplify_chinese(pl.Series("content", texts)).to_list() == [T2S(t) for t in texts]


# ------------------------------------------------------------- punctuation follows the turn's text
def test_the_issue_example_in_an_english_conversation():
    question = "How do I thank a friend for their help in Chinese? What would you say to a teacher?"
    turns = turns_frame(("c1", "en", [question, EXAMPLE]))
    assert clean(turns, traditional_to_simplified=True) == [question, "可以说：「非常感谢你的帮助！」"]
    assert clean(turns, traditional_to_simplified=True)[1] == T2S(EXAMPLE)
    assert clean(turns, traditional_to_simplified=False) == [question, EXAMPLE]  # t2s off: the punctuation still stays Chinese


def test_english_text_in_a_chinese_conversation_gets_ascii_punctuation():
    turns = turns_frame(
        (
            "c1",
            "zh",
            [
                "我想退货，可以吗？",
                "Sure， see you tomorrow！",  # an English turn typed with a Chinese keyboard
                "What does 謝謝 mean？",  # English with a Chinese word: ？ touches English
                "You can say 「謝謝！」 to anyone。",  # ！ touches Chinese, 。 has no ASCII form
                "好的, 谢谢!",  # ASCII punctuation in Chinese text is never made full-width
                "？？",  # no letters at all: the conversation's label decides
            ],
        ),
        ("c2", "en", ["？？", "ok"]),
    )
    assert clean(turns, traditional_to_simplified=True) == [
        "我想退货，可以吗？",
        "Sure, see you tomorrow!",
        "What does 谢谢 mean?",
        "You can say 「谢谢！」 to anyone。",
        "好的, 谢谢!",
        "？？",
        "??",
        "ok",
    ]


def test_chinese_turns_decides_by_text_and_falls_back_to_the_label():
    content = pl.Series(
        ["可以說：「非常感謝你的幫助！」", "OK, thanks!", "？？", "？？", "我想买iPhone 15 Pro Max"]
    )
    labels = pl.Series(["en", "zh", "zh", "en", "en"])
    assert chinese_turns(content, labels).to_list() == [True, False, True, False, True]


def test_normalize_width_keeps_marks_touching_chinese_in_english_turns():
    content = pl.Series(["Say 「你好！」， then wave！", "ＯＫ，ｔｈｘ！", "价格（ＵＳＤ）：１００"])
    labels = pl.Series(["en", "zh", "en"])
    assert normalize_width(content, labels).to_list() == [
        "Say 「你好！」， then wave!",  # ！」， runs on from 好; the last ！ follows English
        "OK,thx!",
        "价格（USD）：100",  # a Chinese turn keeps every kept mark
    ]


def test_protect_near_han_only_touches_runs_next_to_han():
    protected = protect_near_han("ok，谢谢！ fine！")
    assert protected.count("，") == 0 and protected.count("！") == 1  # the last ！ follows "fine"
    assert protect_near_han("ok，thx！") == "ok，thx！"


# ------------------------------------------------------------------------------------ real data
def test_chatterbot_traditional_movies_excerpt_through_ingest_and_clean():
    source = Source.model_validate(
        {"path": str(FIXTURES / "chatterbot_traditional_movies.yml"), "format": "chatterbot_yaml"}
    )
    turns, _, _ = read_source(source)
    english = turns.filter(pl.col("lang") == "en")["conversation_id"].unique().to_list()
    assert len(english) == 2  # "闕veut可怕HAL" and the example conversation are labelled English
    out = clean(turns, traditional_to_simplified=True)
    assert out == [T2S(t) for t in turns.sort("conversation_id", "turn")["content"].to_list()]
    assert "阙veut可怕HAL" in out  # before: 闕 left in, because the conversation was labelled English
    assert "可以说：「非常感谢你的帮助！」" in out  # before: 可以說:「非常感謝你的幫助!」
