"""Sensitive-word filter against disguises (issue 12, item 3): separators, repeated characters and
mixed scripts between the characters of EVERY lexicon term are caught; innocent sentences that put
separators next to lexicon characters still pass."""

from __future__ import annotations

from pathlib import Path

import opencc
import pytest

from chatforge.serving.filters import NORMALISER_VERSION, SensitiveFilter, read_lexicon

ROOT = Path(__file__).resolve().parents[3]
LEXICONS = [ROOT / "lexicons/sensitive/zh.txt", ROOT / "lexicons/sensitive/en.txt"]
TERMS = [t for path in LEXICONS for t in read_lexicon(path)]
ISSUE_TERMS = ["废物", "idiot"]  # the issue's examples: in the shipped lexicons

CJK_SEPARATORS = [" ", ".", "@#￥%", "-", "*", "_"]
LATIN_SEPARATORS = [".", "-", "_", "*", "@#$%", " "]  # " " spells the term out letter by letter
# a look-alike from another script for each latin letter that has one (written out here, not taken
# from the module, so the test checks the table)
HOMOGLYPHS = {
    "a": "а", "b": "Β", "c": "с", "d": "ԁ", "e": "е", "g": "ɡ", "h": "һ", "i": "і", "j": "ј", "k": "к",
    "l": "ӏ", "m": "М", "n": "Ν", "o": "о", "p": "р", "s": "ѕ", "t": "Т", "u": "υ", "v": "ν", "w": "ԝ",
    "x": "х", "y": "у", "z": "Ζ",
}  # fmt: skip


def _is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


def disguises(term: str) -> list[str]:
    """Separators between every pair of characters, each character repeated, look-alikes."""
    out = []
    words = term.split()
    separators = CJK_SEPARATORS if any(_is_cjk(c) for c in term) else LATIN_SEPARATORS
    for sep in separators:
        spelled = [sep.join(w) for w in words]
        out.append(" ".join(spelled))  # the term's own spaces kept: "k.i.l.l y.o.u.r.s.e.l.f"
        if len(words) > 1:
            out.append(sep.join(spelled))  # ... or separated like the letters: "k.i.l.l.y.o.u..."
    for i, char in enumerate(term):
        if char == " ":
            continue
        out.append(term[:i] + char * 3 + term[i + 1 :])  # a stutter: "fuuuck", "傻傻傻逼"
        if not _is_cjk(char) or i in (0, len(term) - 1):
            # doubled: any latin letter; a Chinese one only at the ends (inside a term a doubled
            # Chinese character reads as grammatical reduplication, see test_chinese_reduplication)
            out.append(term[:i] + char * 2 + term[i + 1 :])
        if char in HOMOGLYPHS:
            out.append(term[:i] + HOMOGLYPHS[char] + term[i + 1 :])
    traditional = opencc.OpenCC("s2t").convert(term)
    if traditional != term:
        out.append(traditional)
    return out


def in_context(term: str, disguised: str) -> list[str]:
    """The disguise alone and inside sentences."""
    if any(_is_cjk(c) for c in term):
        out = [disguised, f"说真的，{disguised}！", f"客服 {disguised} 。"]
        if " " not in disguised and "." not in disguised:
            out.append(f"我说{disguised}了")  # glued to other Chinese characters on both sides
        return out
    return [disguised, f"well {disguised}, ok", f"你是{disguised}吗", f"({disguised})"]


@pytest.fixture(scope="module")
def shipped() -> SensitiveFilter:
    return SensitiveFilter.from_files(LEXICONS, mode="block")


@pytest.fixture(scope="module")
def with_issue_terms(shipped: SensitiveFilter) -> SensitiveFilter:
    assert set(ISSUE_TERMS) <= set(TERMS)
    return shipped


def test_both_lexicons_feed_the_disguise_matrix():
    # every term of both files is parametrised below; today 35 Chinese and 28 English terms
    zh, en = (read_lexicon(path) for path in LEXICONS)
    assert len(zh) >= 35 and len(en) >= 28
    assert len(set(TERMS)) == len(TERMS) == len(zh) + len(en)


@pytest.mark.parametrize("term", TERMS)
def test_every_term_is_caught_through_every_disguise(shipped: SensitiveFilter, term: str):
    missed = []
    cases = [text for d in disguises(term) for text in in_context(term, d)]
    assert len(cases) >= 20
    for text in cases:
        result = shipped.apply(text)
        if result.action != "blocked" or term not in result.terms:
            missed.append((text, result.terms))
    assert missed == []


@pytest.mark.parametrize(
    ("text", "term"),
    [("废 物", "废物"), ("废.物", "废物"), ("废@#￥%物", "废物"), ("i.d.i.o.t", "idiot")],
)
def test_issue_examples_are_blocked(with_issue_terms: SensitiveFilter, text: str, term: str):
    result = with_issue_terms.apply(text)
    assert result.action == "blocked"
    assert result.terms == (term,)
    assert with_issue_terms.find(text) == [(0, len(text), term)]


@pytest.mark.parametrize(
    ("text", "span", "term"),
    [
        ("idi\u043et", (0, 5), "idiot"),  # Cyrillic о
        ("\u0399\u0394\u0399\u039f\u0422", None, None),  # Greek Δ is no latin look-alike: no match
        ("i d i o t", (0, 9), "idiot"),
        ("i. d. i. o. t", (0, 13), "idiot"),  # spelled out across sentence punctuation
        ("ｉｄｉｏｔ!", (0, 5), "idiot"),
        ("idiooooot", (0, 9), "idiot"),
        ("fück", (0, 4), "fuck"),  # diacritics
        ("f\u0336u\u0336c\u0336k\u0336", (0, 7), "fuck"),  # strike-through overlay
        ("\u0392\u0399\u03a4\u0421\u041d", (0, 5), "bitch"),  # Greek Β Ι Τ, Cyrillic С Н
        ("k.i.l.l yourself", (0, 16), "kill yourself"),
        ("killyourself", (0, 12), "kill yourself"),
        ("kill_yourself", (0, 13), "kill yourself"),
        ("kill  -  yourself", None, None),  # a spaced hyphen is a dash: a sentence break
        ("傻\n逼", (0, 3), "傻逼"),  # one character per line
        ("你这个傻 逼", (3, 6), "傻逼"),
        ("傻😂逼", (0, 3), "傻逼"),
        ("操你妈妈", (0, 4), "操你妈"),  # extra repeats at the edge of a match never matter
        ("你妈妈妈的", (0, 5), "你妈的"),  # a stutter (3x) inside a match counts
    ],
)
def test_single_disguises_map_to_the_original_span(with_issue_terms, text, span, term):
    found = with_issue_terms.find(text)
    if span is None:
        assert found == []
    else:
        assert (*span, term) in found


def test_run_lengths_and_word_boundaries():
    f = SensitiveFilter(["ass", "fuck"], mode="block")
    assert f.find("asss") == [(0, 4, "ass")]
    assert f.find("fuuuck") == [(0, 6, "fuck")]
    assert f.find("as") == []  # the term's own doubled letter must be there
    assert f.find("a ss") == []  # whitespace inside a latin word bridges only between single letters
    assert f.find("a s s") == [(0, 5, "ass")]
    for innocent in ("class", "glass hole", "assess", "bass", "Scunthorpe", "fuck2"):
        assert f.find(innocent) == [], innocent
    assert f.find("you ass. So what") == [(4, 7, "ass")]  # the run "ss. S" splits at the break
    assert f.find("你是ass吗") == [(2, 5, "ass")]  # Chinese characters are no latin word
    assert f.find("fuck-up") == [(0, 4, "fuck")]  # a hyphenated compound still contains the word


def test_chinese_reduplication_is_not_a_stutter():
    f = SensitiveFilter(["你妈的", "他妈的"], mode="block")
    assert f.find("你妈妈的订单已经发货了。") == []
    assert f.find("这是给他妈妈的生日礼物。") == []
    assert f.find("你妈妈妈的") == [(0, 5, "你妈的")]


def test_separators_far_apart_do_not_bridge():
    f = SensitiveFilter(["废物"], mode="block")
    assert f.find("废" + "@" * 8 + "物") == [(0, 10, "废物")]
    assert f.find("废" + "@" * 9 + "物") == []
    assert f.find("废" + " " * 30 + "物") == [(0, 32, "废物")]  # a whitespace run counts once


INNOCENT_ZH_NEAR_SEPARATORS = [
    "请把旧电脑报废，物流什么时候来取？",  # 废，物 (the issue's example)
    "旧冰箱已经报废.物流明天上门取件吗？",  # half-width full stop between clauses
    "这台电脑报废 物流明天来取",  # a space as a clause break
    "电脑报废😂物流说明天来取",
    "打印机报废~物流还没来",
    "请把旧电脑报废,物流什么时候来取?",  # half-width comma, no space
    "衣服我自己洗，钱您直接退到原卡就行。",  # 洗，钱
    "这件衣服要手洗。钱已经付过了，发票呢？",  # 洗。钱
    "我的电脑 残留的数据能帮忙清除吗？",  # 脑 残
    "请检查一下电脑，残留的文件我还需要。",  # 脑，残
    "奶茶少冰，毒辣的太阳下送过来容易化。",  # 冰，毒
    "他有点傻，逼他也没用，我自己来处理。",  # 傻，逼
    "我太傻。逼真的效果图和实物差太多了。",  # 傻。逼
    "这东西卖得太贱，人家都说不值这个价。",  # 贱，人
    "我想去，你妈妈也一起来吗？",  # 去，你妈
    "我去.你妈妈让你回电话",
    "我要去 你妈妈家拿快递",
    "你妈妈的订单已经发货了。",  # 妈妈: reduplication, not 你妈的
    "这是给他妈妈的生日礼物。",
    "请告诉他，妈的确切地址我已经发你了。",  # 他，妈的
    "这只鸡我杀了，你们几点来拿？",  # 杀了，你
    "鱼我已经杀了 你直接来拿吧",
    "我买的型号是SB，玩意儿怎么安装？",  # SB，玩意
    "订单备注：傻傻的小狗玩具，逼真一点的那款。",
]

INNOCENT_EN_NEAR_SEPARATORS = [
    "I'd do it. I don't mind waiting.",
    "My device ID: IOT-2024-77, it won't connect.",  # id: iot
    "Model ID-IOT7 won't pair with my phone.",
    "Sh, it's a surprise gift, please don't ring the bell.",  # sh, it
    "Shh, it's for my wife, keep it quiet.",
    "Let's go. Die Hard is on TV tonight, so deliver before eight.",  # go. die
    "Go, die-hard fans get early access to the sale!",
    "Is this a fake? Passport holders were promised a discount.",  # fake? passport
    "The money, laundering and ironing are billed separately at the hotel.",
    "Mr. Dick, head of sales, told me to write to you.",  # dick, head
    "Dick Head is the name on the invoice, please keep it.",
    "The bass, hole saw and drill bits arrived in one box.",
    "Glass—hole in the box, please replace the vase.",
    "Is the red bull shipped cold?",
    "Could you screw, you know, the legs on before delivery?",
    "The kit includes a screwdriver; you just need batteries.",
    "Rows K, Y and S are reserved for families.",
    "My seat is 12A. S. Smith sits next to me.",
    "Is there a 64-bit, Chinese-language version of the app?",  # bit, ch
    'Where can I buy "Heroin" by the Velvet Underground on vinyl?',  # buy "heroin"
    "Fake, ID-free checkout for sale items? Great idea.",
    "I will kill-switch the old account, you said?",
    "Please sell, co-sign and ship the cocaine-free energy drinks.",
    "The sky, sadly, was grey on delivery day.",  # k y, s
]


def test_innocent_sentences_with_separators_near_lexicon_characters_pass(with_issue_terms: SensitiveFilter):
    assert len(INNOCENT_ZH_NEAR_SEPARATORS) >= 20 and len(INNOCENT_EN_NEAR_SEPARATORS) >= 20
    flagged = [
        (t, with_issue_terms.find(t))
        for t in INNOCENT_ZH_NEAR_SEPARATORS + INNOCENT_EN_NEAR_SEPARATORS
        if with_issue_terms.apply(t).action != "none"
    ]
    assert flagged == []


def test_a_hyphenated_compound_contains_the_word(with_issue_terms: SensitiveFilter):
    # "I'd do it." never bridges into "idiot" (' is a quote, ". " a sentence end between pieces of
    # more than one letter); "Idiot-proof" itself contains the word, and is matched on purpose: a
    # hyphen does not glue words, or "fuck-up", "shit-head" would pass
    assert with_issue_terms.find("I'd do it. Idiot-proof designs sell well.") == [(11, 16, "idiot")]
    assert with_issue_terms.find("I'd do it. I'd do it.") == []


def test_mask_mode_stars_exactly_the_original_span_of_a_disguised_term():
    f = SensitiveFilter(["fuck", "操你妈", "idiot"], mode="mask")
    assert f.apply("oh f.u.c.k off").text == "oh ******* off"
    assert f.apply("oh f\u200b.u.c.k off").text == "oh *\u200b****** off"  # invisible stays
    assert f.apply("我说操@#你￥妈了").text == "我说******了"
    assert f.apply("you i d i o t!").text == "you *********!"
    assert f.apply("fuuuck!").text == "******!"
    assert f.apply("idi\u043et").text == "*****"
    assert f.apply("f\u0336u\u0336ck").text == "*\u0336*\u0336**"  # combining marks stay on the stars
    assert f.apply("i.\nd.i.o.t").text == "**\n*******"  # line breaks stay
    result = f.apply("请把旧电脑报废，物流什么时候来取？")
    assert (result.action, result.text) == ("none", "请把旧电脑报废，物流什么时候来取？")


def test_block_mode_reports_the_normalised_terms(shipped: SensitiveFilter):
    result = shipped.apply("K.I.L.L   Y.O.U.R.S.E.L.F and 傻@逼")
    assert result == type(result)("K.I.L.L   Y.O.U.R.S.E.L.F and 傻@逼", "blocked", ("kill yourself", "傻逼"))


def test_normaliser_version_is_bumped():
    assert NORMALISER_VERSION == "3"  # 3: t2s through the official OpenCC converter (data.lang.to_simplified)


def test_edge_cases_found_by_fuzzing_against_the_previous_matcher():
    f = SensitiveFilter(["go die", "kill yourself", "shit", "how to make a bomb"], mode="block")
    assert f.find("a goodie bag") == []  # glued words of a term only at their exact spelling
    assert f.find("#killyourself") == [(1, 13, "kill yourself")]
    assert f.find("kill\nyourself") == [(0, 13, "kill yourself")]  # a line break at the term's space
    assert f.find("kill\n\nyour\nself") == []  # ... but not inside one of its words
    # the edge runs "t.T" and "h_h" reach into the neighbouring words: only their outer part counts
    assert f.find("shit.Thanks") == [(0, 4, "shit")]
    assert f.find("Wh_how to make a bomb") == [(3, 21, "how to make a bomb")]
