"""zh/en detection: the single-string rule and its polars-expression twin agree on every input."""

from __future__ import annotations

import polars as pl
import pytest

from chatforge.data.lang import decide_lang, detect_lang, lang_expr, script_counts, to_simplified

CASES = [
    ("查询北京天气", "zh"),
    ("What's the weather in Beijing?", "en"),
    ("我想买iPhone 15 Pro Max", "zh"),  # 3 Han vs 3 Latin words: a tie is Chinese
    ("What does 你好 mean?", "en"),  # 2 Han vs 3 words
    ("Hi, my name is 王小明", "en"),  # 3 Han vs 4 words
    ("订单ABC123到哪了", "zh"),
    ("ＯＫ好的", "zh"),  # full-width Latin counts as one word
    ("ＯＫ", "en"),
    ("Café crème brûlée", "en"),  # accented Latin letters are Latin
    ("𠀀𠀁", "zh"),  # Extension B ideographs
    ("", "en"),
    ("12345 !!! 😀", "en"),  # nothing votes: the default
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_detect_lang(text: str, expected: str) -> None:
    assert detect_lang(text) == expected


def test_counts_and_default() -> None:
    assert script_counts("我想买iPhone 15 Pro Max") == (3, 3)
    assert script_counts("ＯＫ好的") == (2, 1)
    assert detect_lang("123", default="zh") == "zh"
    assert decide_lang(0, 0, default="zh") == "zh"
    # a stricter share turns the tie into English
    assert detect_lang("我想买iPhone 15 Pro Max", min_cjk_share=0.6) == "en"
    assert decide_lang(1, 0) == "zh"
    assert decide_lang(0, 1) == "en"


def test_expression_matches_function() -> None:
    texts = [t for t, _ in CASES] + ["混合 mixed text 文本", "a 中", "中 a b"]
    frame = pl.DataFrame({"content": texts})
    got = frame.select(lang_expr("content"))["lang"].to_list()
    assert got == [detect_lang(t) for t in texts]
    got_default = frame.select(lang_expr("content", default="zh", min_cjk_share=0.6))["lang"].to_list()
    assert got_default == [detect_lang(t, default="zh", min_cjk_share=0.6) for t in texts]


def test_expression_over_groups_sums_counts() -> None:
    # conversation a: "Hi" (1 word) + "你好吗" (3 Han) -> 3 vs 1 -> zh for every row; b: English throughout;
    # c: a null content does not break the sum
    frame = pl.DataFrame(
        {
            "conversation_id": ["a", "a", "b", "b", "c", "c"],
            "content": ["Hi", "你好吗", "Hello there friend", "谢谢", None, "谢谢"],
        }
    )
    out = frame.lazy().with_columns(lang_expr("content", over="conversation_id")).collect()
    assert out["lang"].to_list() == ["zh", "zh", "en", "en", "zh", "zh"]
    assert detect_lang("Hi 你好吗") == "zh"
    assert detect_lang("Hello there friend 谢谢") == "en"


def test_expression_default_can_be_a_column() -> None:
    # rows with neither Han nor Latin letters take the label of their row; the others are decided by text
    frame = pl.DataFrame(
        {"content": ["？？", "？？", "OK", "好的", None], "label": ["zh", "en", "zh", "en", "zh"]}
    )
    got = frame.select(lang_expr("content", default=pl.col("label")))["lang"].to_list()
    assert got == ["zh", "en", "en", "zh", "zh"]


def test_to_simplified_is_opencc_t2s() -> None:
    import opencc

    official = opencc.OpenCC("t2s").convert
    for text in [
        "非常感謝你的幫助！",
        "頭髮",
        "乾燥",
        "著作",
        "雲計算",
        "軟體",
        "What does 謝謝 mean?",
        "",
        "abc 😀",
    ]:
        assert to_simplified(text) == official(text)
    assert to_simplified("頭髮乾燥") == "头发干燥"
    assert to_simplified("著作") == "著作"  # phrase dictionary: not 着作
