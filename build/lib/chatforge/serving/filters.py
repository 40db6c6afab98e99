"""Sensitive-word filter: normalise first so obfuscations match, then Aho-Corasick over the lexicon.

Users dodge word lists with full-width letters (ｆｕｃｋ), inserted zero-width characters, mixed case
and traditional characters (操你媽). Text and lexicon terms go through the same normalisation
(NFKC, case folding, zero-width and other format characters dropped, whitespace runs as one
space, traditional -> simplified)
one character at a time, so every match in the normalised text maps back to a span of the
original, which is what masking replaces.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ahocorasick

NORMALISER_VERSION = "1"  # bump when normalise() changes: it is part of the cache key


@functools.cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


@functools.lru_cache(maxsize=65536)
def _fold_char(char: str) -> str:
    # Cf covers zero-width space/joiners, the BOM and bidi marks: invisible, so never meaningful
    if unicodedata.category(char) == "Cf":
        return ""
    folded = unicodedata.normalize("NFKC", char).casefold()
    if any("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in folded):
        folded = _t2s().convert(folded)
    return folded


def normalise(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its characters, the index of the original character."""
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


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


@dataclass(frozen=True)
class FilterResult:
    text: str  # the text to use downstream (masked in mask mode; unchanged otherwise)
    action: Literal["none", "masked", "blocked"]
    terms: tuple[str, ...]  # the (normalised) lexicon terms that matched


class SensitiveFilter:
    """Aho-Corasick over normalised lexicon terms; latin terms must sit on word boundaries."""

    def __init__(self, terms: Iterable[str], *, mode: Literal["block", "mask"] = "block") -> None:
        folded = sorted({normalise(t)[0].strip() for t in terms} - {""})
        self.mode = mode
        self.size = len(folded)
        self.version = hashlib.sha256(
            "\n".join([NORMALISER_VERSION, mode, *folded]).encode("utf-8")
        ).hexdigest()[:16]
        self._automaton = ahocorasick.Automaton()
        for term in folded:
            self._automaton.add_word(term, term)
        if folded:
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
        folded, origin = normalise(text)
        spans = []
        for end, term in self._automaton.iter(folded):
            start = end - len(term) + 1
            # "class" must not trip on "ass": a term starting/ending with a latin letter or digit
            # matches only where the neighbouring folded character is not one
            if _is_word_char(term[0]) and start > 0 and _is_word_char(folded[start - 1]):
                continue
            if _is_word_char(term[-1]) and end + 1 < len(folded) and _is_word_char(folded[end + 1]):
                continue
            spans.append((origin[start], origin[end] + 1, term))
        return spans

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
                # keep invisible characters out of the mask so the stars match what a reader sees
                if unicodedata.category(chars[i]) != "Cf":
                    chars[i] = "*"
        return FilterResult("".join(chars), "masked", terms)


__all__ = ["FilterResult", "SensitiveFilter", "normalise", "read_lexicon"]
