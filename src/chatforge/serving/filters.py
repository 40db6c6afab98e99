"""Sensitive-word filter: match lexicon terms on a normalised "skeleton" of the text, so the usual
disguises are caught while ordinary sentences that merely put punctuation near lexicon characters
pass.

Disguises handled (for every lexicon term, Chinese and English alike):

- width, case and script variants: NFKC (ｆｕｃｋ, 𝐟𝐮𝐜𝐤, ⓕ), case folding, traditional -> simplified
  Chinese (OpenCC t2s: 操你媽), zero-width and other format characters (Cf) and combining marks
  (Mn/Me: f̶u̶c̶k̶, decomposed accents, variation selectors) dropped;
- "mixed scripts": latin letters with diacritics fold to the bare letter (fück, shït), and the common
  Cyrillic/Greek/Armenian look-alikes of latin letters fold to that letter (idiоt with a Cyrillic о,
  ΒΙΤCΗ with Greek capitals; table `_HOMOGLYPHS`). Chinese variants are covered by NFKC (full-width,
  Kangxi radicals) and t2s. Not covered: leetspeak digits (sh1t), pinyin or homophones (沙比),
  look-alike Chinese characters that are not traditional/simplified pairs;
- repeated characters: runs of the same folded character are one unit that remembers its length,
  so "fuuuck", "傻傻逼" and "操你你你妈" match, while a term's own doubled letter must still be there
  ("as" is not "ass", "asss" is). Chinese doubles characters grammatically (妈妈, 看看, 天天), so
  INSIDE a match a CJK character repeated exactly twice is read as that word, not as a stutter:
  "你妈妈的" ("your mum's") does not match 你妈的, while "你妈妈妈的" does; at the edges of a match extra
  repeats never matter ("操你妈妈" matches 操你妈, as any substring search would);
- separators between the characters of a term (废 物, 废.物, 废@#￥%物, i.d.i.o.t, k-y-s).

How: every text is turned into a skeleton, the sequence of its word characters (letters, digits,
CJK) after folding, each with its span in the ORIGINAL text, and between two consecutive word
characters the separator text that was there (punctuation, symbols, whitespace; invisible characters
never count). Runs of one character collapse into a unit. Lexicon terms are skeletonised the same
way (a space inside a term, as in "kill yourself", becomes a word break). Aho-Corasick runs over the
collapsed skeleton; every candidate is then checked:

1. run lengths: each text unit must be at least as long as the term's unit (the Chinese
   reduplication exception above);
2. every gap inside the match must *bridge*, decided from the gap text and its neighbours:
   - empty (or only invisible characters): bridges. Where the term has a space this means its
     words glued together ("killyourself", a hashtag), accepted only with the exact letters on
     both sides ("goodie" is not "go die");
   - longer than MAX_GAP visible characters (a whitespace run counts as one): never bridges;
   - a natural break: a line break, Chinese/full-width punctuation (，。！？；：、…～ etc.), brackets,
     quotes and apostrophes, dashes (— –, or "-" with a space beside it), ASCII , . ; : ! ? followed by
     whitespace, and ASCII , ; : ! ? next to a Chinese character (half-width typing). It bridges only
     between two spelled-out single characters ("i. d. i. o. t", "废。物"), so "请把旧电脑报废，物流…"
     keeps 废 and 物 apart. Exception: whitespace with a line break bridges where the term itself
     has a space ("kill", line break, "yourself"; as before);
   - "soft" gaps: whitespace and emoji/pictographs (So) only, or only "." or one "~" touching a
     Chinese character. They bridge where the term itself has a space ("kill  yourself"); between
     two latin characters only when both are single (i d i o t, not "a ss" or "dick head"); next to
     a Chinese character when at least one side is single (废 物, 你个傻 逼, 废.物, 傻😂逼). Chat
     uses spaces, emoji, and in Chinese a half-width "." or "~", as clause breaks, so two
     multi-character pieces stay apart ("我的电脑 残留数据", "报废.物流", "报废😂物流");
   - anything else (symbols, ASCII punctuation not followed by whitespace, mixed runs like @#￥%):
     bridges ("dick-head", "废@#￥%物", "你/妈的").
   A "single character" is a piece of exactly one word character: between non-empty gaps, or where
   the script changes (the f of "你是f u c k");
3. latin word boundaries: a term that starts (ends) with a non-CJK letter or digit does not match
   where its first (last) character is glued, with nothing visible between, to another non-CJK word
   character ("class", "assess", "Scunthorpe", "glass hole", "fuck2"). Chinese characters around it
   are fine (你是个asshole). A hyphen does not glue: "fuck-up" and "shit-head" are caught, and so
   would be "idiot-proof" if "idiot" were a term.

Runs collapse across gaps too (k.i.l.l, a s s). Where such a gap does not bridge, the unit is split
there and only the part next to the rest of the match counts ("you ass. So" matches "ass"); at the
edges of a match only as much of a run counts as leaves the match on word boundaries ("shit.Thanks":
the t run "t.T" ends inside "thanks", so the match ends at the first t). Limitation: a term whose
same character sits on both sides of its own space (none in the shipped lexicons) is checked with
in-word rules at that position.

`find` returns spans of the original text (start of the first matched character to the end of the
last, separators inside included); mask mode stars every character of the span except invisible
ones (format characters, combining marks) and line breaks.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import ahocorasick

from chatforge.data.lang import to_simplified

NORMALISER_VERSION = "3"  # 3: official OpenCC t2s. Bump when normalise() or matching changes: it is part of the cache key

MAX_GAP = 8  # visible separator characters (a whitespace run counts once) that may still bridge

# Look-alikes of latin letters in other scripts, applied before and after case folding. Only
# near-identical shapes, so real Greek/Russian words rarely fold into English terms.
_HOMOGLYPHS = {
    # Cyrillic capitals and small letters
    "А": "a", "В": "b", "Е": "e", "К": "k", "М": "m", "Н": "h", "О": "o", "Р": "p", "С": "c",
    "Т": "t", "Х": "x", "У": "y", "Ү": "y", "Ѕ": "s", "І": "i", "Ј": "j", "Ԛ": "q", "Ԝ": "w",
    "Ӏ": "i",
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "і": "i",
    "ј": "j", "ԁ": "d", "һ": "h", "ԛ": "q", "ԝ": "w", "ӏ": "l", "к": "k", "ү": "y",
    # Greek capitals and small letters
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n",
    "Ο": "o", "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x",
    "α": "a", "ο": "o", "ρ": "p", "ι": "i", "κ": "k", "ν": "v", "υ": "u", "χ": "x",
    # Armenian and latin letters without a decomposition
    "օ": "o", "ս": "u", "ı": "i", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ŧ": "t", "ɑ": "a",
    "ɡ": "g",
}  # fmt: skip

# Punctuation that is natural between Chinese clauses (matched on the ORIGINAL character, since
# NFKC turns ，into ,), plus brackets/quotes/dashes in any script.
_NATURAL_PUNCT = frozenset("，。！？；：、．…‥～〜｡､「」『』【】〔〕《》〈〉（）'\"—–―‒⸺")
_ASCII_CLAUSE = frozenset(",;:!?")
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")

# classes of folded characters
_LATIN, _CJK = 0, 1  # word characters (latin = any non-CJK letter or digit)
_WS, _NL, _NAT, _CLAUSE, _DOT, _HYPHEN, _EMOJI, _TILDE, _OTHER = 2, 3, 4, 5, 6, 7, 8, 9, 10  # separators

# kinds of gaps between two consecutive word characters
_EMPTY, _TOO_LONG, _NATURAL, _LINE, _SOFT, _SYMBOL = range(6)


def _is_cjk(char: str) -> bool:
    return char >= "\u2e80"  # CJK radicals onwards: Han, kana, Hangul, and full-width (already folded)


def _strip_marks(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in ("Mn", "Me", "Cf"))


@functools.lru_cache(maxsize=65536)
def _fold_char(char: str) -> str:
    # Cf covers zero-width space/joiners, the BOM and bidi marks; Mn/Me combining marks (accents,
    # strike-through overlays, variation selectors): invisible on their own, so never meaningful
    if unicodedata.category(char) in ("Cf", "Mn", "Me"):
        return ""
    folded = unicodedata.normalize("NFKC", char)
    folded = "".join(_HOMOGLYPHS.get(c, c) for c in folded).casefold()
    if any("\u00c0" <= c < "\u0530" or "\u1e00" <= c < "\u2000" for c in folded):
        # latin/greek/cyrillic letters with diacritics -> the bare letter (ü -> u, ё -> е -> e)
        folded = "".join(_HOMOGLYPHS.get(c, c) for c in unicodedata.normalize("NFD", folded))
    folded = _strip_marks(folded)
    if any("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in folded):
        folded = to_simplified(folded)
    return folded


@functools.lru_cache(maxsize=65536)
def _char_info(char: str) -> tuple[tuple[str, int], ...]:
    """The folded characters of `char`, each with its class (see the _LATIN.. constants)."""
    out = []
    for c in _fold_char(char):
        if c.isalnum():
            out.append((c, _CJK if _is_cjk(c) else _LATIN))
        elif c in _LINE_BREAKS:
            out.append((c, _NL))
        elif c.isspace():
            out.append((c, _WS))
        elif char in _NATURAL_PUNCT or unicodedata.category(c) in ("Ps", "Pe", "Pi", "Pf"):
            out.append((c, _NAT))
        elif c in _ASCII_CLAUSE:
            out.append((c, _CLAUSE))
        elif c == ".":
            out.append((c, _DOT))
        elif c == "~":
            out.append((c, _TILDE))
        elif unicodedata.category(c) == "Pd":  # hyphens; the long dashes are natural (above)
            out.append((c, _HYPHEN))
        elif unicodedata.category(c) == "So" or "\U0001f3fb" <= c <= "\U0001f3ff":  # emoji (+ skin tones)
            out.append((c, _EMOJI))
        else:
            out.append((c, _OTHER))
    return tuple(out)


def normalise(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its characters, the index of the original character.

    The per-character folding the filter uses (width, case, script look-alikes, t2s, invisible
    characters dropped), with whitespace runs as one space. Matching itself works on the skeleton
    of this text (see the module docstring).
    """
    out: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(text):
        folded = _fold_char(char)
        if folded.isspace():
            # runs of spaces/tabs/newlines count as one space, so "kill   yourself" still matches
            if out and out[-1] == " ":
                continue
            folded = " "
        out.append(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


def read_lexicon(path: Path | str) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: sensitive-word lexicon not found. Fix serve.filter.lexicons in params.yaml "
            "(one term per line, '#' starts a comment)."
        )
    terms = []
    for line in path.read_text(encoding="utf-8").splitlines():
        term = line.split("#", 1)[0].strip()
        if term:
            terms.append(term)
    return terms


def _gap_kind(gap: list[int], left_cjk: bool, right_cjk: bool) -> int:
    """Classify the separator classes between two word characters (see the module docstring)."""
    if not gap:
        return _EMPTY
    visible = 0
    previous = -1
    for c in gap:
        if not (c == _WS and previous == _WS):
            visible += 1
        previous = c
    if visible > MAX_GAP:
        return _TOO_LONG
    near_cjk = left_cjk or right_cjk
    last = len(gap) - 1
    if near_cjk and (all(c == _DOT for c in gap) or gap == [_TILDE]):
        return _SOFT  # "好的.谢谢", "好的~谢谢": half-width typists end Chinese clauses so
    if _NL in gap and all(c in (_WS, _NL) for c in gap):
        return _LINE  # whitespace with a line break (only whitespace would have been _SOFT)
    soft = True
    for j, c in enumerate(gap):
        if c in (_WS, _EMOJI):
            continue
        soft = False
        if c in (_NL, _NAT):
            return _NATURAL
        followed_by_space = j < last and gap[j + 1] in (_WS, _NL)
        if c == _CLAUSE and (followed_by_space or near_cjk):
            return _NATURAL
        if c == _DOT and followed_by_space:
            return _NATURAL
        if c == _HYPHEN and (followed_by_space or (j > 0 and gap[j - 1] == _WS)):
            return _NATURAL
    return _SOFT if soft else _SYMBOL


class _Skeleton:
    """The word characters of a text with the gaps between them; runs collapsed into units.

    Built in two steps: the collapsed `key` (what Aho-Corasick runs over) first, the gap analysis
    (`analyse`) only for texts where some term's key occurs, which most texts never need.
    """

    __slots__ = (
        "bridge_break",
        "bridge_word",
        "gaps",
        "glue",
        "key",
        "latin",
        "segments",
        "start",
        "unit_first",
    )

    def __init__(self, text: str) -> None:
        chars: list[str] = []
        start: list[int] = []  # per word character: index of its original character
        latin: list[bool] = []  # per word character: not CJK
        gaps: list[list[int]] = []  # per word character: the separator classes before it
        key: list[str] = []  # one character per unit (runs collapsed)
        unit_first: list[int] = []  # per unit: its first word character
        gap: list[int] = []
        last = ""
        for i, char in enumerate(text):
            for c, cls in _char_info(char):
                if cls <= _CJK:
                    if c != last:
                        key.append(c)
                        unit_first.append(len(chars))
                        last = c
                    chars.append(c)
                    start.append(i)
                    latin.append(cls == _LATIN)
                    gaps.append(gap)
                    gap = []
                elif chars:  # separators before the first word character never matter
                    gap.append(cls)
        self.key = "".join(key)
        self.start = start
        self.latin = latin
        self.unit_first = unit_first
        self.gaps = gaps

    def analyse(self) -> None:
        """Sets glue, bridge_word, bridge_break (per word character) and segments (per unit)."""
        latin, gaps = self.latin, self.gaps
        n = len(latin)
        kinds = [_EMPTY] * n
        for k in range(1, n):
            if gaps[k]:
                kinds[k] = _gap_kind(gaps[k], not latin[k - 1], not latin[k])
        # pieces: word characters of one kind (latin or CJK) joined by empty gaps ("你是f": 你是, f);
        # "single" = a piece of one character
        single = [False] * n
        k = 0
        while k < n:
            j = k + 1
            while j < n and kinds[j] == _EMPTY and latin[j] == latin[j - 1]:
                j += 1
            if j == k + 1:
                single[k] = True
            k = j
        glue = [False] * n  # empty gap before it and both sides latin: one latin word
        bridge_word = [True] * n  # the gap before it bridges inside a word of a term
        bridge_break = [True] * n  # ... where the term has a word break (a space)
        for k in range(1, n):
            kind = kinds[k]
            if kind == _EMPTY:
                glue[k] = latin[k - 1] and latin[k]
            elif kind == _TOO_LONG:
                bridge_word[k] = bridge_break[k] = False
            elif kind == _NATURAL:
                bridge_word[k] = bridge_break[k] = single[k - 1] and single[k]
            elif kind == _LINE:  # a line break: natural, except at a term's own space ("kill\nyourself")
                bridge_word[k] = single[k - 1] and single[k]
            elif kind == _SOFT:
                if latin[k - 1] and latin[k]:
                    bridge_word[k] = single[k - 1] and single[k]
                else:
                    bridge_word[k] = single[k - 1] or single[k]
        # per unit, its parts: a run is split where an in-word gap does not bridge
        bounds = [*self.unit_first, n]
        segments: list[list[tuple[int, int]]] = []
        for u in range(len(self.unit_first)):
            parts = [(bounds[u], bounds[u])]
            for k in range(bounds[u] + 1, bounds[u + 1]):
                if bridge_word[k]:
                    parts[-1] = (parts[-1][0], k)
                else:
                    parts.append((k, k))
            segments.append(parts)
        self.glue, self.bridge_word, self.bridge_break, self.segments = (
            glue,
            bridge_word,
            bridge_break,
            segments,
        )


class _Term(NamedTuple):
    term: str  # the normalised term, as reported
    runs: tuple[int, ...]  # per unit: how many times its character repeats
    breaks: tuple[bool, ...]  # per unit: the term has a word break before it
    latin_start: bool
    latin_end: bool


def _term_pattern(term: str) -> tuple[str, _Term] | None:
    chars: list[str] = []
    gap_before: list[bool] = []
    gap = False
    for char in term:
        for c, cls in _char_info(char):
            if cls <= _CJK:
                chars.append(c)
                gap_before.append(gap)
                gap = False
            else:
                gap = True
    if not chars:
        return None
    key: list[str] = []
    runs: list[int] = []
    breaks: list[bool] = []
    for c, g in zip(chars, gap_before):
        if key and key[-1] == c:
            runs[-1] += 1
        else:
            key.append(c)
            runs.append(1)
            breaks.append(g)
    display = " ".join(normalise(term)[0].split())
    return "".join(key), _Term(
        display, tuple(runs), tuple(breaks), not _is_cjk(chars[0]), not _is_cjk(chars[-1])
    )


@dataclass(frozen=True)
class FilterResult:
    text: str  # the text to use downstream (masked in mask mode; unchanged otherwise)
    action: Literal["none", "masked", "blocked"]
    terms: tuple[str, ...]  # the (normalised) lexicon terms that matched


class SensitiveFilter:
    """Aho-Corasick over the skeletons of normalised lexicon terms (see the module docstring)."""

    def __init__(self, terms: Iterable[str], *, mode: Literal["block", "mask"] = "block") -> None:
        patterns: dict[str, list[_Term]] = {}
        folded: set[str] = set()
        for term in terms:
            pattern = _term_pattern(term)
            if pattern is None:
                continue
            key, info = pattern
            if info.term not in folded:
                folded.add(info.term)
                patterns.setdefault(key, []).append(info)
        self.mode = mode
        self.size = len(folded)
        self.version = hashlib.sha256(
            "\n".join([NORMALISER_VERSION, mode, *sorted(folded)]).encode("utf-8")
        ).hexdigest()[:16]
        self._automaton = ahocorasick.Automaton()
        self._longest_key = max((len(k) for k in patterns), default=0)
        for key, infos in patterns.items():
            self._automaton.add_word(key, (len(key), tuple(infos)))
        if patterns:
            self._automaton.make_automaton()

    @classmethod
    def from_files(
        cls, paths: Iterable[Path | str], *, mode: Literal["block", "mask"] = "block"
    ) -> SensitiveFilter:
        terms: list[str] = []
        for path in paths:
            terms.extend(read_lexicon(path))
        return cls(terms, mode=mode)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Matches as (start, end) spans of the ORIGINAL text (end exclusive) with the term."""
        if not self.size or not text:
            return []
        sk = _Skeleton(text)
        hits = list(self._automaton.iter(sk.key)) if sk.key else []
        if not hits:
            return []
        sk.analyse()
        found: set[tuple[int, int, str]] = set()
        for end_unit, (length, infos) in hits:
            first_unit = end_unit - length + 1
            for info in infos:
                span = self._check(sk, first_unit, end_unit, info)
                if span is not None:
                    found.add((sk.start[span[0]], sk.start[span[1]] + 1, info.term))
        return sorted(found)

    def pending_start(self, text: str) -> int:
        """Where the tail of `text` that more text could still turn into a term begins:
        len(text) when no tail can. A stream shows only text[:pending_start(text)] until more
        arrives, so it never shows the first characters of a term it will then have to withhold
        (the tail is matched on the same skeleton as `find`: separators, repeats, look-alikes)."""
        if not self.size or not text:
            return len(text)
        sk = _Skeleton(text)
        key = sk.key
        for i in range(max(0, len(key) - self._longest_key), len(key)):
            if self._automaton.match(key[i:]):  # the tail's key is a term's key or its beginning
                return sk.start[sk.unit_first[i]]
        return len(text)

    @staticmethod
    def _check(sk: _Skeleton, first_unit: int, end_unit: int, info: _Term) -> tuple[int, int] | None:
        """(first, last) word characters of the match, or None where a rule rejects it."""
        runs = info.runs
        if first_unit == end_unit:  # a one-unit term: any stretch of a part that is long enough
            for a, b in sk.segments[first_unit]:
                start = _free_start(sk, a, b - runs[0] + 1, info.latin_start)
                if start is not None:
                    end = _free_end(sk, start + runs[0] - 1, b, info.latin_end)
                    if end is not None:
                        return start, end
            return None
        a, b_first = sk.segments[first_unit][-1]  # the part next to the rest of the match
        start = _free_start(sk, a, b_first - runs[0] + 1, info.latin_start)
        if start is None:
            return None
        used = [b_first - start + 1]  # per unit of the match: the length of run it uses
        for offset in range(1, end_unit - first_unit):
            parts = sk.segments[first_unit + offset]
            if len(parts) != 1:
                return None
            run, need = parts[0][1] - parts[0][0] + 1, runs[offset]
            # Chinese doubles characters grammatically (妈妈, 看看): inside a match a CJK run counts
            # only at its exact length or as a stutter of 2+ extra ("你妈妈的" is not "你妈的")
            if run < need or (run == need + 1 and not sk.latin[parts[0][0]]):
                return None
            used.append(run)
        a_last, b = sk.segments[end_unit][0]
        end = _free_end(sk, a_last + runs[-1] - 1, b, info.latin_end)
        if end is None:
            return None
        used.append(end - a_last + 1)
        for offset in range(1, end_unit - first_unit + 1):
            k = sk.unit_first[first_unit + offset]
            if not info.breaks[offset]:
                if not sk.bridge_word[k]:
                    return None
            elif not sk.bridge_break[k]:
                return None
            elif not sk.gaps[k] and (used[offset - 1], used[offset]) != runs[offset - 1 : offset + 1]:
                # words of the term glued together ("killyourself") only at their exact spelling:
                # "goodie" is not "go die"
                return None
        return start, end

    def apply(self, text: str) -> FilterResult:
        spans = self.find(text)
        if not spans:
            return FilterResult(text, "none", ())
        terms = tuple(sorted({t for _, _, t in spans}))
        if self.mode == "block":
            return FilterResult(text, "blocked", terms)
        chars = list(text)
        for start, end, _ in spans:
            for i in range(start, end):
                # keep invisible characters (and line breaks) out of the mask so the stars match
                # what a reader sees
                if chars[i] not in _LINE_BREAKS and unicodedata.category(chars[i]) not in ("Cf", "Mn", "Me"):
                    chars[i] = "*"
        return FilterResult("".join(chars), "masked", terms)


def _free_start(sk: _Skeleton, first: int, last: int, latin: bool) -> int | None:
    """The earliest start in first..last that is not glued to a latin word character before it.

    The edge units of a match may use only part of their run: in "wh_how to…" the h run "h_h"
    starts inside the word "wh", the match starts at its second h.
    """
    if first > last:
        return None
    if not latin:
        return first
    for k in range(first, last + 1):
        if not sk.glue[k]:
            return k
    return None


def _free_end(sk: _Skeleton, first: int, last: int, latin: bool) -> int | None:
    """The latest end in first..last that is not glued to a latin word character after it."""
    if first > last:
        return None
    if not latin:
        return last
    n = len(sk.glue)
    for k in range(last, first - 1, -1):
        if k + 1 >= n or not sk.glue[k + 1]:
            return k
    return None


__all__ = ["MAX_GAP", "NORMALISER_VERSION", "FilterResult", "SensitiveFilter", "normalise", "read_lexicon"]
