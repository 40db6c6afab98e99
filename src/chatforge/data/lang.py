"""zh/en language detection by the share of Chinese characters in a text.

The corpus is bilingual and the two scripts hardly overlap, so counting beats a statistical model:
a text is Chinese when its Han characters are at least as many as its Latin words. Words, not
letters, are counted on the Latin side because one Han character carries about as much as one
English word: "我想买iPhone 15 Pro Max" (3 Han, 3 words) is Chinese, "What does 你好 mean?"
(2 Han, 3 words) is English. Full-width Latin letters (ＯＫ) count as Latin.

`detect_lang` works on one string; `lang_expr` is the same rule as a polars expression, optionally
summed over a group (e.g. a whole conversation) before deciding. Both use the same patterns, so
they agree on every input.

`to_simplified` is the project's one traditional -> simplified Chinese conversion (OpenCC t2s), used
by the clean stage and by the serving filter alike.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Literal

import polars as pl

Lang = Literal["zh", "en"]

# CJK Unified Ideographs, Extension A, Compatibility Ideographs, Extensions B-F + supplement.
HAN_PATTERN = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]"
# A run of Latin letters: ASCII, Latin-1/Extended-A/B accents, full-width A-Z a-z.
LATIN_WORD_PATTERN = "[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\uff21-\uff3a\uff41-\uff5a]+"

# zh when han / (han + latin_words) reaches this share; 0.5 means "at least as many Han as words".
MIN_CJK_SHARE = 0.5

_HAN = re.compile(HAN_PATTERN)
_LATIN_WORD = re.compile(LATIN_WORD_PATTERN)


def script_counts(text: str) -> tuple[int, int]:
    """(Han characters, Latin words) in `text`."""
    return len(_HAN.findall(text)), len(_LATIN_WORD.findall(text))


def decide_lang(
    han: int, latin_words: int, *, min_cjk_share: float = MIN_CJK_SHARE, default: Lang = "en"
) -> Lang:
    """The rule itself, on counts; `default` when the text has neither Han nor Latin letters."""
    if han + latin_words == 0:
        return default
    # han / (han + words) >= share, written without a division exactly as lang_expr computes it
    return "zh" if han * (1.0 - min_cjk_share) - latin_words * min_cjk_share >= 0 else "en"


def detect_lang(text: str, *, min_cjk_share: float = MIN_CJK_SHARE, default: Lang = "en") -> Lang:
    """ "zh" or "en" for one text (digits, punctuation and emoji do not vote)."""
    han, words = script_counts(text)
    return decide_lang(han, words, min_cjk_share=min_cjk_share, default=default)


def lang_expr(
    content: str | pl.Expr = "content",
    *,
    over: str | list[str] | None = None,
    min_cjk_share: float = MIN_CJK_SHARE,
    default: Lang | pl.Expr = "en",
) -> pl.Expr:
    """`detect_lang` as an expression; with `over`, counts are summed per group first (one answer per group).

    `default` (used where the text has neither Han characters nor Latin words) may be an expression,
    e.g. `pl.col("lang")` to fall back to an existing label row by row.

    Each count appears twice in the expression: use it in a lazy frame (`frame.lazy().with_columns(...)`)
    so polars' common-subexpression elimination runs each regex once (about 3x faster on big frames).
    """
    col = pl.col(content) if isinstance(content, str) else content
    han = col.str.count_matches(HAN_PATTERN).fill_null(0).cast(pl.Int64)
    words = col.str.count_matches(LATIN_WORD_PATTERN).fill_null(0).cast(pl.Int64)
    if over is not None:
        han, words = han.sum().over(over), words.sum().over(over)
    score = han.cast(pl.Float64) * (1.0 - min_cjk_share) - words.cast(pl.Float64) * min_cjk_share
    return (
        pl.when(han + words == 0)
        .then(pl.lit(default) if isinstance(default, str) else default)
        .when(score >= 0)
        .then(pl.lit("zh"))
        .otherwise(pl.lit("en"))
        .alias("lang")
    )


# ------------------------------------------------------------------ scripts other than Han and Latin
# The project has no model for other languages, and t2s would rewrite the Han characters of Japanese
# (東京の天気 -> 东京の天気). Each script is counted in the unit that weighs like one Han character or one
# Latin word: hiragana by character (Japanese grammar: の は です), katakana, hangul and the alphabets by
# word (a run of their letters), so one katakana loanword or one Russian word weighs like one English word.
UNSUPPORTED_SCRIPTS: dict[str, tuple[str, ...]] = {
    # name -> (per-character pattern, per-word pattern); either may be empty
    "kana (Japanese)": ("[\u3040-\u309f]", "[\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]+"),
    "hangul (Korean)": ("", "[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]+"),
    "Cyrillic": ("", "[\u0400-\u052f]+"),
    "Arabic": ("", "[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufefc]+"),
    "Hebrew": ("", "[\u0590-\u05ff]+"),
    "Greek": ("", "[\u0370-\u03ff]+"),
    "Devanagari": ("", "[\u0900-\u097f]+"),
    "Thai": ("", "[\u0e00-\u0e7f]+"),
}
# a text is in an unsupported language when one such script holds at least this share of all units
# (Han characters + Latin words + every script's units): 東京の天気 is 1 hiragana of 5 units = 0.2
MIN_UNSUPPORTED_SHARE = 0.2
# any character of the scripts above: the cheap pre-check before counting
UNSUPPORTED_CHAR_PATTERN = (
    "["
    + "".join(p.strip("[]+") for patterns in UNSUPPORTED_SCRIPTS.values() for p in patterns if p)
    + "]"
)
_UNSUPPORTED = {
    name: tuple(re.compile(p) if p else None for p in patterns) for name, patterns in UNSUPPORTED_SCRIPTS.items()
}
_UNSUPPORTED_CHAR = re.compile(UNSUPPORTED_CHAR_PATTERN)


def unsupported_script(
    texts: str | Iterable[str], *, min_share: float = MIN_UNSUPPORTED_SHARE
) -> tuple[str, float] | None:
    """(script name, its share of all units) when the texts together are written mostly enough in a script
    other than Han/Latin (kana, hangul, Cyrillic, Arabic, ...); None for zh/en text.

    unsupported_script("東京の天気") == ("kana (Japanese)", 0.2); a Chinese text with Latin words or an
    English text with a Chinese name gives None.
    """
    text = texts if isinstance(texts, str) else "\n".join(texts)
    if not _UNSUPPORTED_CHAR.search(text):
        return None
    han, words = script_counts(text)
    units = {
        name: sum(len(p.findall(text)) for p in patterns if p is not None)
        for name, patterns in _UNSUPPORTED.items()
    }
    total = han + words + sum(units.values())
    name, count = max(units.items(), key=lambda item: item[1])
    share = count / total if total else 0.0
    return (name, share) if count and share >= min_share else None


# ------------------------------------------------------------------ traditional -> simplified
# OpenCC's t2s configuration: phrase dictionary first (頭髮 -> 头发, 乾燥 -> 干燥, 著作 stays), then
# characters, maximum forward matching. Always the `opencc` package (the maintained official build).
T2S_CONFIG = "t2s"


@functools.cache
def _t2s() -> Callable[[str], str]:
    import opencc  # the official OpenCC build (PyPI `opencc`): C++ converter, binary .ocd2 dictionaries

    return opencc.OpenCC(T2S_CONFIG).convert


def to_simplified(text: str) -> str:
    """`text` with traditional Chinese converted to simplified by OpenCC's t2s (phrases, then characters).

    Only CJK characters change; Latin letters, digits, punctuation (「」，！ included) and emoji pass through,
    so it is safe on mixed text: to_simplified("可以說：「非常感謝你的幫助！」") == "可以说：「非常感谢你的帮助！」".
    It converts script, not regional vocabulary ("軟體" -> "软体", not "软件"). The converter is built on
    the first call (about 50 ms) and kept for the process. Raises ModuleNotFoundError when the `opencc`
    package is not installed.
    """
    return _t2s()(text)


__all__ = [
    "HAN_PATTERN",
    "LATIN_WORD_PATTERN",
    "MIN_CJK_SHARE",
    "MIN_UNSUPPORTED_SHARE",
    "UNSUPPORTED_CHAR_PATTERN",
    "UNSUPPORTED_SCRIPTS",
    "Lang",
    "decide_lang",
    "detect_lang",
    "lang_expr",
    "script_counts",
    "to_simplified",
    "unsupported_script",
]
