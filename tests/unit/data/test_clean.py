"""chatforge.data.clean and stages/clean.py: every text rule, PII, drops, counts, lexicon errors, real data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from chatforge.data.clean import (
    COUNT_KEYS,
    LexiconError,
    clean_turns,
    collapse_whitespace,
    load_synonyms,
    mask_emails,
    mask_numbers,
    mask_phones,
    normalize_synonyms,
    normalize_width,
    remove_control_symbols,
    simplify_chinese,
    strip_html,
)
from chatforge.data.schema import TURNS_SCHEMA
from chatforge.io import write_parquet
from chatforge.params import CleanParams

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = CleanParams()


def s(*values: str) -> pl.Series:
    return pl.Series("content", list(values), dtype=pl.String)


def langs(*values: str) -> pl.Series:
    return pl.Series("lang", list(values), dtype=pl.String)


def conv(cid: str, *texts: str, lang: str = "zh", intent: str | None = "weather") -> list[dict]:
    return [
        {
            "conversation_id": cid,
            "turn": i,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": t,
            "lang": lang,
            "intent": intent,
            "source": "unit",
            "origin_id": None,
            "method": "original",
        }
        for i, t in enumerate(texts)
    ]


def frame(*convs: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([row for c in convs for row in c], schema=TURNS_SCHEMA)


def cleaned_text(texts: list[str], lang: str = "zh", **params) -> list[str]:
    """Each text as the single user turn of its own conversation, through the whole clean."""
    turns = frame(*(conv(f"c{i:03d}", t, f"answer {i}", lang=lang) for i, t in enumerate(texts)))
    out, _ = clean_turns(
        turns, params=CleanParams(dedup_exact=False, dedup_near=False, min_chars=0, **params)
    )
    return out.filter(pl.col("turn") == 0)["content"].to_list()


# ------------------------------------------------------------------------------------- rules
def test_html_tags_comments_breaks_and_entities():
    out = strip_html(
        s(
            "<p>查询北京天气&nbsp;</p>",
            "a<br>b<br/>c<BR />d",
            "<div class='x'>hi <b>there</b><!-- hidden --></div><script>alert(1)</script>",
            "&lt;b&gt; is &amp;lt; and &#20013;&#x6587; &quot;q&quot; &unknown;",
            "a < b and c > d, x<y",
            "联系<PHONE>客服",
        )
    )
    assert out.to_list() == [
        "\n查询北京天气\xa0\n",
        "a\nb\nc\nd",
        "\nhi there\n",
        '<b> is &lt; and 中文 "q" &unknown;',
        "a < b and c > d, x<y",
        "联系<PHONE>客服",
    ]


def test_whole_clean_of_the_issue_examples_zh_and_en():
    assert cleaned_text(
        ["<p>查询北京天气&nbsp;😊</p>", "今日北京晴，15-25℃！★※", "###  优惠  ### ~~活动~~"]
    ) == [
        "查询北京天气",
        "今日北京晴，15-25°C！",
        "优惠 活动",
    ]
    assert cleaned_text(["<b>Hello</b>&nbsp;&nbsp;world 👍🏻 ★", "ＡＢＣ１２３，ＯＫ？"], lang="en") == [
        "Hello world",
        "ABC123,OK?",
    ]


def test_control_zero_width_replacement_and_symbols():
    out = remove_control_symbols(
        s(
            "x\u200by\u200fz\ufeffw\x07\x1b\x85v\u00adu",
            "好的😊👍🏻🇨🇳❤️★☆■◆♥※〓 ok",
            "保留：，。！？、；：“”（）《》 and .,!?;:'\"()-/",
            "温度15~25℃ 价格¥99 涨幅5% 北京→上海 #1",
        )
    )
    assert out.to_list() == [
        "xyzwvu",
        "好的 ok",
        "保留：，。！？、；：“”（）《》 and .,!?;:'\"()-/",
        "温度15~25℃ 价格¥99 涨幅5% 北京→上海 #1",
    ]
    kept = remove_control_symbols(s("好的😊★👍"), keep_emoji=True)
    assert kept.to_list() == ["好的😊👍"]


def test_nfkc_width_keeps_chinese_punctuation_on_zh_rows_only():
    out = normalize_width(
        s("ＡＢＣ１２３，好的！（注）…", "ＡＢＣ１２３，ｏｋ！（ｎｏｔｅ）…", "①　㎏ ＠"),
        langs("zh", "en", "zh"),
    )
    assert out.to_list() == ["ABC123，好的！（注）…", "ABC123,ok!(note)...", "1 kg @"]


def test_traditional_to_simplified_matches_opencc_wherever_chinese_stands():
    from opencc import OpenCC

    texts = ["我們的軟體與頭髮", "這個網路很慢，請稍後再試。", "乾燥的天氣", "Thé 與 café", "no Chinese"]
    out = simplify_chinese(s(*texts))
    converter = OpenCC("t2s")
    assert out.to_list() == [converter.convert(t) for t in texts]
    assert out.to_list()[0] == "我们的软体与头发"  # t2s converts script, not regional vocabulary
    assert out.to_list()[3:] == ["Thé 与 café", "no Chinese"]  # Han in any row; Latin untouched
    assert cleaned_text(["這個網路很慢"], traditional_to_simplified=True) == ["这个网路很慢"]


def test_whitespace_collapse_keeps_single_line_breaks():
    out = collapse_whitespace(s("  a \t b  ", "line1  \r\n\r\n  line2\n\n\nline3 ", "\n \n"))
    assert out.to_list() == ["a b", "line1\nline2\nline3", ""]


LEXICON = {
    "好": "好的",
    "好滴": "好的",
    "嗯嗯": "好的",
    "OK": "okay",
    "ok": "okay",
    "thx": "thanks",
    "thank u": "thanks",
}


def test_synonyms_chinese_runs_and_whole_words():
    out = normalize_synonyms(
        s(
            "好滴，谢谢",
            "好滴",
            "好滴谢谢",
            "嗯嗯 好！",
            "你好，好评",
            "OK, thx! thank u",
            "a token is ok",
            "Ok THX",
            "ok，我知道了",
            "ok谢谢",
            "好ok",
        ),
        synonyms=LEXICON,
    )
    assert out.to_list() == [
        "好的，谢谢",
        "好的",
        "好滴谢谢",
        "好的 好的！",
        "你好，好评",
        "okay, thanks! thanks",
        "a token is okay",
        "Ok THX",
        "okay，我知道了",
        "ok谢谢",
        "好的ok",  # no word boundary between 好 and ok
    ]


def test_synonyms_lexicon_file(tmp_path):
    path = tmp_path / "synonyms.tsv"
    path.write_text(
        "# variant<TAB>canonical\n好滴\t好的\n\n好哒\t好滴\r\nOK\tokay\nokay\tokay\n", encoding="utf-8"
    )
    assert load_synonyms(path) == {
        "好滴": "好的",
        "好哒": "好的",
        "OK": "okay",
    }  # chain resolved, no-op dropped


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("# c\n好滴\t好的\tx\n", ":2:"),  # three fields
        ("好滴\t好的\n好哒\n", ":2:"),  # one field
        ("# c\n好滴 好的\n", ":2:"),  # spaces, no tab
        ("好滴\t\n", ":1:"),  # empty canonical
    ],
)
def test_malformed_lexicon_line_names_file_and_line(tmp_path, text, needle):
    path = tmp_path / "syn.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LexiconError) as err:
        load_synonyms(path)
    assert f"{path}{needle}" in str(err.value) and "variant<TAB>canonical" in str(err.value)


def test_lexicon_conflict_cycle_missing_and_encoding(tmp_path):
    conflict = tmp_path / "a.tsv"
    conflict.write_text("ok\tOK\nok\tokay\n", encoding="utf-8")
    with pytest.raises(LexiconError, match=r"a.tsv:2: variant 'ok' maps to 'okay' but line 1"):
        load_synonyms(conflict)
    cycle = tmp_path / "b.tsv"
    cycle.write_text("甲\t乙\n乙\t甲\n", encoding="utf-8")
    with pytest.raises(LexiconError, match="cycle"):
        load_synonyms(cycle)
    with pytest.raises(LexiconError, match="not found.*synonyms_path: null"):
        load_synonyms(tmp_path / "missing.tsv")
    gbk = tmp_path / "c.tsv"
    gbk.write_bytes("好滴\t好的\n".encode() + "嗯\t好\n".encode("gbk"))
    with pytest.raises(LexiconError, match=r"c.tsv:2: not valid UTF-8"):
        load_synonyms(gbk)


# ---------------------------------------------------------------------------------------- PII
def test_pii_positives():
    out = mask_phones(
        mask_numbers(
            mask_emails(
                s(
                    "电话13812345678,13912345678。",
                    "call +86 138 1234 5678 or +1 415-555-2671 or 010-12345678 or (021)62345678",
                    "邮箱 John.Doe+cs@mail.example.com.cn 谢谢",
                    "身份证11010519491231002X，另一个440304199001011233",
                    "卡号6222021234567890128 / 4111 1111 1111 1111 / 5500-0000-0000-0004",
                )
            )
        )[0]
    )
    assert out.to_list() == [
        "电话<PHONE>,<PHONE>。",
        "call <PHONE> or <PHONE> or <PHONE> or <PHONE>",
        "邮箱 <EMAIL> 谢谢",
        "身份证<ID>，另一个<ID>",
        "卡号<CARD> / <CARD> / <CARD>",
    ]


def test_pii_negatives_order_numbers_and_near_misses_survive():
    texts = [
        "订单号2024052012345已发货",  # 13-digit date-based order number
        "订单号2024052012349",  # passes Luhn, but no card starts with 2
        "订单号6024052012346",  # card-like prefix, fails Luhn
        "单号202405201234567899",  # 18 digits, not a valid ID shape, not a card
        "440304199001011234",  # ID shape, wrong check digit; not Luhn either
        "SO13812345678 和 JD4111111111111111",  # glued to letters: part of an order id
        "138123456789",  # 12 digits: not a mobile number
        "2024-05-20 10:30，价格1999元，数量12",
        "user@localhost 不是完整邮箱",
    ]
    masked, ids, cards = mask_numbers(mask_emails(s(*texts)))
    assert mask_phones(masked).to_list() == texts
    assert (ids, cards) == (0, 0)


def test_pii_kinds_and_switch():
    text = "13812345678 a@b.cn 4111111111111111 11010519491231002X"
    assert cleaned_text([text]) == ["<PHONE> <EMAIL> <CARD> <ID>"]
    assert cleaned_text([text], pii_kinds=["email"]) == [
        "13812345678 <EMAIL> 4111111111111111 11010519491231002X"
    ]
    assert cleaned_text([text], pii_kinds=["card"]) == ["13812345678 a@b.cn <CARD> 11010519491231002X"]
    assert cleaned_text([text], mask_pii=False) == [text]


# ------------------------------------------------------------------------------ drops, counts
def test_drops_whole_conversations_and_counts_each_reason_once():
    turns = frame(
        conv("c01", "查询北京天气", "今日北京晴，15-25℃"),
        conv("c02", "😊★", "好的"),  # first turn becomes empty
        conv("c03", "x" * 30, "ok"),  # too long for max_chars=20
        conv("c04", "查询北京天气", "今日北京晴，15-25℃"),  # exact duplicate of c01
        conv("c05", "<b>查询 北京天气！</b>", "今日北京晴 15-25℃"),  # near duplicate of c01
        conv("c06", "Hi", "Hello there", lang="en"),
        conv("c07", "hi!!", "HELLO   THERE.", lang="en"),  # near duplicate of c06
        conv("c08", "hi", "hello there", "bye", lang="en"),  # different length: kept
        conv("c09", "", "x"),  # empty from the start
    )
    out, counts = clean_turns(turns.reverse(), params=CleanParams(max_chars=20))
    assert out["conversation_id"].unique(maintain_order=True).to_list() == ["c01", "c06", "c08"]
    assert out.columns == list(TURNS_SCHEMA)
    assert out.filter(pl.col("conversation_id") == "c01")["content"].to_list() == [
        "查询北京天气",
        "今日北京晴，15-25°C",
    ]
    assert out.group_by("conversation_id").agg(pl.col("turn").sort()).sort("conversation_id")[
        "turn"
    ].to_list() == [
        [0, 1],
        [0, 1],
        [0, 1, 2],
    ]
    assert set(counts) == set(COUNT_KEYS)
    assert {
        k: counts[k]
        for k in ("dropped_empty", "dropped_length", "dropped_exact_duplicate", "dropped_near_duplicate")
    } == {
        "dropped_empty": 2,
        "dropped_length": 1,
        "dropped_exact_duplicate": 1,
        "dropped_near_duplicate": 2,
    }
    assert (
        counts["rows_in"],
        counts["conversations_in"],
        counts["rows_out"],
        counts["conversations_out"],
    ) == (19, 9, 7, 3)
    assert (
        counts["changed_html"] == 1 and counts["changed_control_symbols"] == 1 and counts["changed_nfkc"] == 3
    )


def test_length_bounds_and_dedup_switches():
    turns = frame(conv("a", "短", "回答"), conv("b", "短", "回答"), conv("c", "長一點的問題", "回答"))
    out, counts = clean_turns(turns, params=CleanParams(min_chars=2, dedup_exact=False, dedup_near=False))
    assert out["conversation_id"].unique().sort().to_list() == ["c"] and counts["dropped_length"] == 2
    out, counts = clean_turns(turns, params=CleanParams(dedup_exact=False, dedup_near=False))
    assert out["conversation_id"].n_unique() == 3 and counts["dropped_exact_duplicate"] == 0
    out, counts = clean_turns(turns, params=CleanParams(dedup_exact=False))
    assert (
        out["conversation_id"].unique().sort().to_list() == ["a", "c"]
        and counts["dropped_near_duplicate"] == 1
    )


def test_rule_counts_name_the_rows_each_rule_changed():
    turns = frame(
        conv("a", "<i>查询</i>天气", "好滴"),
        conv("b", "ｏｒｄｅｒ\ufffd\ufffd status", "call 13812345678", lang="en"),
        conv("c", "thx  a lot", "ok mail a@b.cn, card 4111111111111111, id 11010519491231002X", lang="en"),
    )
    _, counts = clean_turns(turns, params=DEFAULTS, synonyms=LEXICON)
    assert counts == dict.fromkeys(COUNT_KEYS, 0) | {
        "rows_in": 6,
        "conversations_in": 3,
        "rows_out": 6,
        "conversations_out": 3,
        "changed_html": 1,
        "changed_replacement_char": 1,
        "replacement_chars_removed": 2,
        "changed_nfkc": 1,
        "changed_whitespace": 1,
        "changed_synonyms": 3,
        "masked_email": 1,
        "masked_card": 1,
        "masked_id_number": 1,
        "masked_phone": 1,
    }


def test_null_content_drops_the_conversation_and_is_counted():
    turns = frame(conv("a", "ok", "fine"), conv("b", "hello", "x")).with_columns(
        content=pl.when((pl.col("conversation_id") == "b") & (pl.col("turn") == 1))
        .then(None)
        .otherwise(pl.col("content"))
    )
    out, counts = clean_turns(turns, params=DEFAULTS)
    assert out["conversation_id"].unique().to_list() == ["a"] and counts["dropped_empty"] == 1


def test_same_input_twice_gives_identical_frames_and_parquet(tmp_path):
    turns = frame(
        *(conv(f"c{i:04d}", f"<p>问题{i % 7}&amp;😊</p>", f"回答 {i % 5} 13812345678") for i in range(300))
    )
    shuffled = turns.sample(fraction=1.0, shuffle=True, seed=3)
    a, ca = clean_turns(turns, params=DEFAULTS, synonyms=LEXICON)
    b, cb = clean_turns(shuffled, params=DEFAULTS, synonyms=LEXICON)
    assert a.equals(b) and ca == cb
    assert a["conversation_id"].n_unique() == 35  # 7 x 5 distinct (question, answer) pairs survive dedup
    write_parquet(a, tmp_path / "a.parquet")
    write_parquet(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


# ---------------------------------------------------------------------------------- real data
def _corrupt(text: str, every: int) -> str:
    """What a lossy decoder does to real text: cut one byte out of a CJK character every `every` lines."""
    lines = text.split("\n")
    for i in range(0, len(lines), every):
        raw = lines[i].encode("utf-8")
        cut = raw.find("。".encode()) + 1  # inside the first 3-byte full stop
        if cut > 0:
            lines[i] = (raw[:cut] + raw[cut + 1 :]).decode("utf-8", errors="replace")
    return "\n".join(lines)


@pytest.mark.parametrize("corrupt_every", [0, 25])
def test_xdailydialog_replacement_chars_are_removed_and_counted(shared_datasets, tmp_path, corrupt_every):
    from chatforge.data.ingest import read_source
    from chatforge.params import Source

    raw = (shared_datasets / "xdailydialog" / "zh_test_human.txt").read_text(encoding="utf-8")
    text = _corrupt(raw, corrupt_every) if corrupt_every else raw
    path = tmp_path / "zh_test_human.txt"
    path.write_text(text, encoding="utf-8")
    in_file = text.count("\ufffd")
    if corrupt_every:
        assert in_file >= 30  # the stored file has none (checked below); the corrupted copy must
    else:
        assert in_file == 0

    turns, _, _ = read_source(Source(path=str(path), format="dailydialog", name="xdd"), base_dir="/")
    assert turns["conversation_id"].n_unique() > 900
    rows_with = int(turns["content"].str.contains("\ufffd", literal=True).sum())
    chars = int(turns["content"].str.count_matches("\ufffd", literal=True).sum())
    assert chars == in_file  # ingest passes decoded text through untouched

    out, counts = clean_turns(turns, params=DEFAULTS)
    assert int(out["content"].str.contains("\ufffd", literal=True).sum()) == 0
    assert counts["changed_replacement_char"] == rows_with and counts["replacement_chars_removed"] == chars
    assert (
        counts["rows_out"] == out.height and counts["conversations_in"] == turns["conversation_id"].n_unique()
    )
    # well formed: every kept conversation still has turns 0..n-1
    gaps = out.group_by("conversation_id").agg((pl.col("turn").max() + 1 - pl.len()).alias("gap"))
    assert gaps["gap"].max() == 0


# -------------------------------------------------------------------------------- stage script
def _run_stage(tmp_path: Path, params: dict, turns: pl.DataFrame) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"clean": params}, allow_unicode=True), encoding="utf-8"
    )
    write_parquet(turns, tmp_path / "turns.parquet")
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "stages" / "clean.py"),
            "turns.parquet",
            "out/clean.parquet",
            "reports/clean.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_stage_writes_parquet_and_flat_metrics(tmp_path):
    (tmp_path / "syn.tsv").write_text("好滴\t好的\n", encoding="utf-8")
    turns = frame(conv("a", "好滴", "13812345678"), conv("b", "好滴", "13812345678"))
    done = _run_stage(tmp_path, {"synonyms_path": "syn.tsv", "max_chars": "50"}, turns)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "clean.parquet")
    assert out["content"].to_list() == ["好的", "<PHONE>"]
    metrics = yaml.safe_load((tmp_path / "reports" / "clean.json").read_text(encoding="utf-8"))
    assert metrics["dropped_exact_duplicate"] == 1 and metrics["changed_synonyms"] == 2
    assert all(isinstance(v, int) for v in metrics.values())


def test_stage_bad_params_and_bad_lexicon_give_clear_errors(tmp_path):
    turns = frame(conv("a", "hi", "ho"))
    done = _run_stage(tmp_path, {"max_char": 10}, turns)
    assert (
        done.returncode == 2
        and "clean.max_char: unknown key" in done.stderr
        and "Traceback" not in done.stderr
    )
    done = _run_stage(tmp_path, {"min_chars": "lots"}, turns)
    assert done.returncode == 2 and "clean.min_chars = 'lots'" in done.stderr
    (tmp_path / "syn.tsv").write_text("好滴\t好的\n坏行\n", encoding="utf-8")
    done = _run_stage(tmp_path, {"synonyms_path": "syn.tsv"}, turns)
    assert done.returncode == 2 and "syn.tsv:2: expected 'variant<TAB>canonical'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "clean.parquet").exists()
