"""The baseline bench/data_stages.py measures chatforge.data.clean against: the same clean rules
written the straightforward way, one row at a time in pure Python (re + unicodedata + html.unescape),
conversations grouped in dicts, duplicates found with a dict of signatures.

It reuses the rule patterns of chatforge.data.clean and chatforge.data.lang (the text of the regexes,
not their code), so both implement one specification. Per turn, in order: html; U+FFFD, controls and
symbols; NFKC, where a turn is Chinese by its own text (Han characters >= Latin words; the
conversation's `lang` label only when the turn has neither) and then keeps its full-width ，！？（）：；～…,
while any other turn keeps those marks only in a run of non-word characters touching a Han character;
traditional -> simplified with the official OpenCC t2s converter on every turn holding a Han character,
whatever its label; whitespace; synonyms; emails, ID and card numbers (separators between the groups
ignored for the checksums), phones. Python's `re` has no Unicode property classes (\\p{Han},
\\p{Extended_Pictographic}, ...), so `BaselineCleaner.__init__` turns each property class into an
explicit list of code-point ranges once, by asking polars which of the 1.1M code points match it; that
set-up is timed separately and the per-row work never touches polars.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from chatforge.data import clean as spec
from chatforge.data import lang as lang_spec
from chatforge.params import CleanParams

Row = dict[str, Any]


def _ranges_of(rust_class: str) -> str:
    """A Python character class equal to a Rust-regex class, from probing every code point once."""
    import polars as pl

    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    hits = pl.Series([chr(c) for c in points]).str.contains(f"^{rust_class}$").to_list()
    parts, start, prev = [], None, None
    for cp, hit in zip(points, hits, strict=True):
        if hit and start is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
            start = prev = None
        if hit:
            start = prev = cp
    if start is not None:
        parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
    return "[" + "".join(parts) + "]"


def _python(rust_pattern: str) -> str:
    # Rust `$` is end of text; Python's `$` would also match before a final newline
    return rust_pattern.replace("($|", r"(\Z|").replace("${1}", r"\1").replace("${2}", r"\2")


class BaselineCleaner:
    def __init__(self, params: CleanParams, synonyms: Mapping[str, str]) -> None:
        self.params = params
        self.comment = re.compile(spec.HTML_COMMENT)
        self.script = re.compile(spec.HTML_SCRIPT)
        self.breaks = re.compile(spec.HTML_BREAK)
        self.tags = re.compile(spec.HTML_TAG)
        self.entity = re.compile(spec.HTML_ENTITY)
        removed = spec.REMOVE_KEEP_EMOJI_CLASS if params.keep_emoji else spec.REMOVE_CLASS
        self.remove = re.compile(f"{_ranges_of(removed)}+|{spec.DECORATION}")
        self.nonchar = re.compile("[\ufdd0-\ufdef]")
        self.protect = str.maketrans(dict(zip(spec.ZH_PUNCTUATION_KEPT, spec._PLACEHOLDERS, strict=True)))
        self.restore = str.maketrans(dict(zip(spec._PLACEHOLDERS, spec.ZH_PUNCTUATION_KEPT, strict=True)))
        self.han_char = re.compile(lang_spec.HAN_PATTERN)
        self.latin_word = re.compile(lang_spec.LATIN_WORD_PATTERN)
        self.cjk_share = lang_spec.MIN_CJK_SHARE
        self.non_word_run = re.compile(r"[^\w]+")
        self.spaces = re.compile(r"[^\S\n]+")
        self.lines = re.compile(r" ?\n\s*")
        han = _ranges_of(r"\p{Han}")
        self.han_runs = re.compile(f"{han}+|{han.replace('[', '[^', 1)}+")
        self.han_only = re.compile(f"{han}+")
        self.runs = {v: c for v, c in synonyms.items() if self.han_only.fullmatch(v)}
        by_canonical: dict[str, list[str]] = {}
        for v, c in synonyms.items():
            if v not in self.runs:
                by_canonical.setdefault(c, []).append(v)
        self.words = [
            (re.compile("|".join(spec._word_pattern(v) for v in sorted(vs, key=lambda v: (-len(v), v)))), c)
            for c, vs in sorted(by_canonical.items())
        ]
        self.email = re.compile(spec.EMAIL)
        self.phone = re.compile(_python(spec.PHONE))
        self.number_candidate = re.compile(spec.NUMBER_CANDIDATE)
        self.number_tokens = re.compile(spec.NUMBER_TOKENS)
        self.not_digit_or_x = re.compile(spec.NOT_DIGIT_OR_X)
        self.id_shape = re.compile(spec.ID_SHAPE.strip("^$"))
        self.card_shape = re.compile(spec.CARD_SHAPE.strip("^$"))
        self.alnum = re.compile("[0-9A-Za-z]")
        self.fold = re.compile(_ranges_of(spec.FOLD[:-1]) + "+")
        self.t2s = None
        if params.traditional_to_simplified:
            from opencc import OpenCC  # the official OpenCC build (PyPI `opencc`)

            self.t2s = OpenCC("t2s").convert

    # ----------------------------------------------------------------------------------- rules
    def strip_html(self, text: str) -> str:
        text = self.comment.sub("", text)
        text = self.script.sub("", text)
        text = self.breaks.sub("\n", text)
        text = self.tags.sub("", text)
        return self.entity.sub(lambda m: html.unescape(m.group(0)), text)

    def remove_control_symbols(self, text: str) -> str:
        return self.remove.sub("", text)

    def is_chinese(self, text: str, lang: str) -> bool:
        """The turn's own text decides (Han characters vs Latin words); `lang` only when it has neither."""
        han = len(self.han_char.findall(text))
        words = len(self.latin_word.findall(text))
        if han + words == 0:
            return lang == "zh"
        return han * (1.0 - self.cjk_share) - words * self.cjk_share >= 0

    def protect_near_han(self, text: str) -> str:
        """Kept marks hidden in each run of non-word characters that has a Han character right before or after it."""
        out, end = [], 0
        for m in self.non_word_run.finditer(text):
            start, stop = m.span()
            out.append(text[end:start])
            near = (start > 0 and self.han_char.match(text[start - 1])) or (
                stop < len(text) and self.han_char.match(text[stop])
            )
            out.append(m.group().translate(self.protect) if near else m.group())
            end = stop
        out.append(text[end:])
        return "".join(out)

    def nfkc(self, text: str, lang: str) -> str:
        zh = self.is_chinese(text, lang)  # decided on the text as it enters this rule
        text = self.nonchar.sub("", text)
        if zh:
            text = text.translate(self.protect)
        elif self.han_char.search(text):
            text = self.protect_near_han(text)
        return unicodedata.normalize("NFKC", text).translate(self.restore)

    def simplify(self, text: str) -> str:
        return self.t2s(text) if self.han_char.search(text) else text

    def whitespace(self, text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        return self.lines.sub("\n", self.spaces.sub(" ", text)).strip()

    def synonyms(self, text: str) -> str:
        if self.runs:
            text = "".join(self.runs.get(tok, tok) for tok in self.han_runs.findall(text))
        for pattern, canonical in self.words:
            text = pattern.sub(canonical.replace("\\", "\\\\"), text)
        return text

    def _is_id(self, digits: str) -> bool:
        # ASCII only: the library reads the digits as an integer, which other scripts' digits are not
        if not digits.isascii() or not self.id_shape.fullmatch(digits):
            return False
        total = sum(int(c) * w for c, w in zip(digits[:17], spec.ID_WEIGHTS, strict=True))
        return digits[17].upper() == spec.ID_CHECK[total % 11]

    def _is_card(self, digits: str) -> bool:
        if not digits.isascii() or not self.card_shape.fullmatch(digits):
            return False
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        return total % 10 == 0

    def mask_numbers(self, text: str, ids: bool, cards: bool) -> tuple[str, bool, bool]:
        if not self.number_candidate.search(text):
            return text, False, False
        tokens = self.number_tokens.findall(text)
        any_id = any_card = False
        for i, tok in enumerate(tokens):
            before = tokens[i - 1][-1] if i else ""
            after = tokens[i + 1][0] if i + 1 < len(tokens) else ""
            if self.alnum.match(before) or self.alnum.match(after):
                continue
            digits = self.not_digit_or_x.sub("", tok)  # separators between the groups do not count
            if ids and self._is_id(digits):
                tokens[i], any_id = "<ID>", True
            elif cards and self._is_card(digits):
                tokens[i], any_card = "<CARD>", True
        return "".join(tokens), any_id, any_card

    # --------------------------------------------------------------------------------- the loop
    def clean(self, rows: Iterable[Row]) -> tuple[list[Row], dict[str, int]]:
        p = self.params
        counts = dict.fromkeys(spec.COUNT_KEYS, 0)
        kinds = set(p.pii_kinds) if p.mask_pii else set()
        conversations: dict[str, list[Row]] = {}

        def step(key: str, new: str, old: str) -> str:
            counts[key] += new != old
            return new

        for row in rows:
            counts["rows_in"] += 1
            text, lang = row["content"] or "", row["lang"] or ""
            if p.strip_html:
                text = step("changed_html", self.strip_html(text), text)
            if p.remove_control:
                counts["replacement_chars_removed"] += text.count("\ufffd")
                text = step("changed_replacement_char", text.replace("\ufffd", ""), text)
                text = step("changed_control_symbols", self.remove_control_symbols(text), text)
            if p.nfkc:
                text = step("changed_nfkc", self.nfkc(text, lang), text)
            if self.t2s is not None:
                text = step("changed_t2s", self.simplify(text), text)
            text = step("changed_whitespace", self.whitespace(text), text)
            if self.runs or self.words:
                text = step("changed_synonyms", self.synonyms(text), text)
            if "email" in kinds:
                text = step("masked_email", self.email.sub("<EMAIL>", text), text)
            if kinds & {"id_number", "card"}:
                text, any_id, any_card = self.mask_numbers(text, "id_number" in kinds, "card" in kinds)
                counts["masked_id_number"] += any_id
                counts["masked_card"] += any_card
            if "phone" in kinds:
                text = step(
                    "masked_phone", self.phone.sub(r"\1<PHONE>\2", self.phone.sub(r"\1<PHONE>\2", text)), text
                )
            conversations.setdefault(row["conversation_id"], []).append({**row, "content": text})

        counts["conversations_in"] = len(conversations)
        kept: list[Row] = []
        exact: set[tuple[tuple[str, str], ...]] = set()
        near: set[tuple[tuple[str, str], ...]] = set()
        for cid in sorted(conversations):
            turns = sorted(conversations[cid], key=lambda r: r["turn"])
            lengths = [len(t["content"]) for t in turns]
            if 0 in lengths:
                counts["dropped_empty"] += 1
                continue
            if any(n < p.min_chars or n > p.max_chars for n in lengths):
                counts["dropped_length"] += 1
                continue
            signature = tuple((t["role"], t["content"]) for t in turns)
            if p.dedup_exact:
                if signature in exact:
                    counts["dropped_exact_duplicate"] += 1
                    continue
                exact.add(signature)
            if p.dedup_near:
                folded = tuple((role, self.fold.sub("", content.lower())) for role, content in signature)
                if folded in near:
                    counts["dropped_near_duplicate"] += 1
                    continue
                near.add(folded)
            kept.extend(turns)
        counts["rows_out"], counts["conversations_out"] = (
            len(kept),
            len(conversations)
            - sum(
                counts[k]
                for k in (
                    "dropped_empty",
                    "dropped_length",
                    "dropped_exact_duplicate",
                    "dropped_near_duplicate",
                )
            ),
        )
        return kept, counts


def read_conversations_json(path: Path | str, *, source: str = "demo") -> list[Row]:
    """The baseline's ingest: json.load and one dict per message (no validation beyond the shape)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows: list[Row] = []
    for conv in data["conversations"]:
        for turn, message in enumerate(conv["messages"]):
            rows.append(
                {
                    "conversation_id": f"{source}:{conv['id']}",
                    "turn": turn,
                    "role": message["role"],
                    "content": message["content"],
                    "lang": conv.get("lang"),
                    "intent": conv.get("intent"),
                    "source": source,
                    "origin_id": None,
                    "method": "original",
                }
            )
    return rows
