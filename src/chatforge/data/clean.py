"""Clean the canonical turns table: one pass of text rules, then conversation-level drops.

Text rules, in this order, each on the whole `content` column with polars expressions; Python runs
only once per distinct text of the few rows that need OpenCC (t2s) or a per-mark decision (nfkc on
turns mixing Chinese into other text). `reports/clean.json` counts the rows each rule changed:

1. html            tags of known HTML elements and comments removed, <script>/<style> bodies
                   dropped, <br> and block tags (<p>, <div>, <li>, ...) become line breaks, entities
                   (&nbsp; &amp; &lt; &#39; &#x4e2d; ...) decoded once, after tags, so that
                   "&lt;b&gt;" stays the literal text "<b>". Text like "a < b" is left alone.
2. replacement     U+FFFD (what a wrong decoder leaves behind) removed.
3. control_symbols C0/C1 control characters (tab, newline, CR kept for step 6), format characters
                   (zero-width U+200B-U+200F, U+FEFF, bidi marks, soft hyphen), private-use
                   characters, emoji (Unicode Extended_Pictographic, modifiers, flags, variation
                   selectors), decorative symbol blocks (box drawing, geometric shapes, misc symbols,
                   dingbats: ★ ■ ◆ ♥ ※ 〓) and decoration runs (~~ ### ** ==). CJK punctuation
                   ，。！？、；：“”（）《》 and ASCII punctuation are kept, as are ℃ ° ¥ % and arrows.
                   `keep_emoji` keeps emoji-presentation characters (😊 👍, not ★).
4. nfkc            NFKC: full-width letters/digits/space -> ASCII (ＡＢＣ１２３ -> ABC123), compatibility
                   forms (① -> 1, ℃ -> °C). In Chinese turns the full-width punctuation ，！？（）：；～
                   and … survive, because they are the correct forms in Chinese text. Whether a turn is
                   Chinese is decided from its own text (`chatforge.data.lang`: at least as many Han
                   characters as Latin words), not from the conversation's `lang` label, which is only
                   the fallback for a turn with neither (e.g. "？？"). In other turns the marks touching
                   a Han character survive too (a Chinese quote or word inside English text). So a
                   Chinese answer in an English conversation keeps "：「…！」" and an English turn in a
                   Chinese one gets "OK, thanks!".
5. t2s             (optional) traditional -> simplified with OpenCC t2s (`chatforge.data.lang.
                   to_simplified`, the official OpenCC converter) on every turn that holds a Han
                   character, whatever its label: Chinese text is converted wherever it stands
                   ("What does 謝謝 mean?" -> "What does 谢谢 mean?"); other scripts pass through. Each
                   distinct text is converted once.
6. whitespace      runs of spaces/tabs -> one space, blank lines removed, ends trimmed; single line
                   breaks are kept (they carry list structure in answers).
7. synonyms        variants from the lexicon -> their canonical form, whole tokens only, case-
                   sensitive, in one pass (chains in the lexicon are resolved at load time). The rule
                   depends on the variant's script, not on the row's language: a variant made of
                   Chinese characters must be a whole run of Chinese characters, i.e. the whole turn
                   or a stretch not preceded or followed by another Chinese character ("好滴，谢谢" ->
                   "好的，谢谢", "好" in "好，谢谢" is replaced but not in "你好" or "好评"; there is no
                   word segmentation, so "好滴谢谢" is left alone). Any other variant matches as whole
                   words at regex word boundaries ("ok" -> "okay", but not inside "token").
8. pii_*           emails -> <EMAIL>; 18-digit Chinese ID numbers (region, a real date, ISO 7064
                   check digit, X allowed) -> <ID>; bank cards -> <CARD>; phones -> <PHONE>.
                   Numbers must stand alone: no digit or ASCII letter directly before or after.
                   Between the groups of a number people write a separator (SEP): one or two spaces
                   (ASCII, no-break, ideographic 　), or one hyphen/dash/dot - . ‐ ‑ ‒ – — ― − － ．
                   with up to two spaces on either side ("139 - 1234 - 5678", "139- 1234 - 5678"
                   as in DailyDialog's tokenised text, "139－1234－5678", "139.1234.5678").
                   A card is 13-19 digits, plain or grouped 4-4-4-4(-1..3) or 4-6-5 (Amex), starting
                   3-6 (the issuer ranges of UnionPay, Visa, Mastercard, Amex, JCB) and passing the
                   Luhn check. So a date-based order number like 2024052012345 is never a card; an
                   order number starting 3-6 is masked only in the 1 in 10 cases where it happens to
                   pass Luhn. An ID is plain or grouped 6-8-4, 6-4-4-4 or 4-4-4-4-2. Phones: Chinese
                   mobiles 1[3-9]x xxxx xxxx in 3-4-4 groups with optional +86/0086/(+86);
                   international numbers written with a leading + or ＋ (+1 415-555-2671); North
                   American 3-3-4 numbers with a dash or dot between every group or the area code in
                   parentheses (626-555-1739, 415.555.2671, (626) 555-1739; not 626 555 1739, which
                   could be any three numbers); landlines with a 0 area code (010-12345678,
                   010 12345678, (021)62345678, （021）62345678, 010-1234-5678 with a dash or dot
                   between all three groups: "2024 0520 1234 5678" is an order number).
                   Emails: name@domain.tld, also with ＠ ． and, before a common top-level domain
                   (com, cn, net, org, ...; COMMON_TLDS), spaces around @ and the dots and the
                   spelled-out [at] (at) [dot] (dot) forms ("tom @ example . com", "tom [at] example
                   [dot] com"). Not masked: dates (2024-05-20, 2024.05.20), times (12:30), prices
                   (1999.00), 7-digit local numbers (447-9626). Taiwan / Hong Kong (Python `re`
                   on candidate rows): TW national IDs and HK IDs -> <ID>, TW 09xx mobiles and HK
                   8-digit numbers -> <PHONE> (REGIONAL_ID, REGIONAL_PHONE below for the exact forms).
                   Masking folds width itself: a turn holding full-width digits, letters or ＠ is
                   matched on a width-folded copy and the spans are masked in the original, so
                   `nfkc: false` masks the same numbers (mask_text_wide). The patterns are written in the
                   syntax Rust's regex and Python's `re` share (bench/baseline_clean.py reuses them).

Then conversation-level drops (each conversation counted under the first reason that applies, and
always dropped whole, so no conversation is left with a hole): a turn that became empty; a turn
outside [min_chars, max_chars] characters; an exact duplicate of an earlier conversation (same roles
and contents in order); a near duplicate (equal after lower-casing and removing whitespace,
punctuation, symbols and emoji). "Earlier" is conversation_id order: the first one is kept.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import polars as pl

from chatforge.data.lang import HAN_PATTERN, LATIN_WORD_PATTERN, lang_expr, to_simplified
from chatforge.data.schema import conform, sort_turns
from chatforge.params import CleanParams

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ lexicon


class LexiconError(ValueError):
    """A synonyms lexicon that cannot be used; the message names the file and line."""


def load_synonyms(path: Path | str) -> dict[str, str]:
    """Read a `variant<TAB>canonical` lexicon (UTF-8, `#` comment lines) into variant -> canonical.

    Chains (a -> b, b -> c) are resolved to a -> c so that one pass of replacement suffices.
    """
    path = Path(path)
    if not path.is_file():
        raise LexiconError(
            f"{path}: synonyms lexicon not found. Create it (one 'variant<TAB>canonical' per line) "
            "or set clean.synonyms_path: null in params.yaml to switch synonym normalisation off."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise LexiconError(
            f"{path}:{line}: not valid UTF-8 ({exc.reason}). Save the lexicon as UTF-8."
        ) from None
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise LexiconError(
                f"{path}:{number}: expected 'variant<TAB>canonical' (two non-empty fields separated by one "
                f"tab), got {line[:80]!r}. Fix or delete this line (comment lines start with #)."
            )
        variant, canonical = parts[0].strip(), parts[1].strip()
        if variant in mapping and mapping[variant] != canonical:
            raise LexiconError(
                f"{path}:{number}: variant {variant!r} maps to {canonical!r} but line {lines[variant]} maps it to "
                f"{mapping[variant]!r}. A variant can have only one canonical form; keep one of the two lines."
            )
        mapping[variant], lines[variant] = canonical, number
    return _resolve_chains(mapping, path)


def _resolve_chains(mapping: dict[str, str], path: Path) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for variant, canonical in mapping.items():
        visited = [variant]
        while canonical in mapping and mapping[canonical] != canonical:
            if canonical in visited:
                raise LexiconError(
                    f"{path}: synonyms form a cycle: {' -> '.join([*visited, canonical])}. Break it."
                )
            visited.append(canonical)
            canonical = mapping[canonical]
        if variant != canonical:
            resolved[variant] = canonical
    return resolved


# --------------------------------------------------------------------------------------- helpers
def _on_rows(content: pl.Series, rows: pl.Series, rule: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """`rule` applied to the rows at `rows` only; every rule pre-selects the rows it could change with
    one cheap scan, because most turns need no work and a full pass per rule dominates the run time."""
    if not len(rows):
        return content
    return content.clone().scatter(rows, rule(content.gather(rows)))  # clone: scatter works in place


# ----------------------------------------------------------------------------------- rule 1: html
_BLOCK_TAGS = "p|div|li|ul|ol|dl|dt|dd|tr|table|thead|tbody|tfoot|h[1-6]|blockquote|pre|hr|section|article|header|footer|main|aside|nav|figure|form"
# Only known element names count as tags: "<PHONE>" placeholders and "a<b" in prose must survive.
_INLINE_TAGS = (
    "a|abbr|b|big|body|button|caption|center|cite|code|col|colgroup|del|em|figcaption|font|head|html|i|iframe|img|"
    "input|ins|kbd|label|link|mark|meta|noscript|option|q|s|samp|select|small|source|span|strike|strong|sub|sup|"
    "td|th|textarea|title|tt|u|var|video|audio|wbr|svg|path"
)
HTML_COMMENT = r"(?s)<!--.*?-->"
HTML_SCRIPT = r"(?is)<script\b[^>]*>.*?</script\s*>|<style\b[^>]*>.*?</style\s*>"
HTML_BREAK = rf"(?i)<br\s*/?>|</?(?:{_BLOCK_TAGS})\b[^<>]*>"
HTML_TAG = rf"(?i)</?(?:{_INLINE_TAGS})\b[^<>]*>"
HTML_ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"


def strip_html(content: pl.Series) -> pl.Series:
    def rule(part: pl.Series) -> pl.Series:
        out = (
            part.str.replace_all(HTML_COMMENT, "")
            .str.replace_all(HTML_SCRIPT, "")
            .str.replace_all(HTML_BREAK, "\n")
            .str.replace_all(HTML_TAG, "")
        )
        return decode_entities(out)

    return _on_rows(content, content.str.contains(r"[<&]").arg_true(), rule)


def decode_entities(content: pl.Series) -> pl.Series:
    """Decode each distinct entity once with the stdlib's HTML5 table, then replace all in one pass.

    Only the few distinct entity strings present go through Python; the replacement over the rows is
    one Aho-Corasick pass. Unknown entities (&foo;) are left as they are.
    """
    found = content.str.extract_all(HTML_ENTITY).explode().drop_nulls().unique().sort().to_list()
    table = {e: html.unescape(e) for e in found}
    table = {e: d for e, d in table.items() if d != e}
    if not table:
        return content
    return content.str.replace_many(list(table), list(table.values()), leftmost=True)


# ------------------------------------------------------------------- rules 2-3: control, symbols
REPLACEMENT_CHAR = "\ufffd"
_CONTROL = r"\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\p{Cf}\p{Co}"
_EMOJI = r"\p{Extended_Pictographic}\p{Emoji_Modifier}\p{Regional_Indicator}\x{FE0E}\x{FE0F}\x{20E3}\x{E0020}-\x{E007F}"
# box drawing, blocks, geometric shapes, misc symbols, dingbats, misc symbols+arrows, ※, 〓
_SYMBOL_BLOCKS = r"\x{2500}-\x{27BF}\x{2B00}-\x{2BFF}\x{203B}\x{3013}"
DECORATION = r"[~#*=～＃＊＝]{2,}"
# one alternation, one pass: each removed character class is a single Unicode-aware DFA state set
REMOVE_CLASS = rf"[{_CONTROL}{_EMOJI}{_SYMBOL_BLOCKS}]"
# keep_emoji: controls and the symbol blocks minus what is displayed as emoji by default (😊, not ★)
REMOVE_KEEP_EMOJI_CLASS = rf"[{_CONTROL}[[{_SYMBOL_BLOCKS}]--\p{{Emoji_Presentation}}]]"
REMOVE = rf"{REMOVE_CLASS}+|{DECORATION}"
REMOVE_KEEP_EMOJI = rf"{REMOVE_KEEP_EMOJI_CLASS}+|{DECORATION}"


def remove_replacement_chars(content: pl.Series) -> pl.Series:
    return content.str.replace_all(REPLACEMENT_CHAR, "", literal=True)


def remove_control_symbols(content: pl.Series, *, keep_emoji: bool = False) -> pl.Series:
    # with keep_emoji, ZWJ sequences lose their joiner (a format character); the pieces stay visible
    return content.str.replace_all(REMOVE_KEEP_EMOJI if keep_emoji else REMOVE, "")


# ---------------------------------------------------------------------------------- rule 4: nfkc
ZH_PUNCTUATION_KEPT = "，！？（）：；～…"
# Noncharacters U+FDD0.. are never valid in interchange text and NFKC leaves them alone, which makes
# them safe stand-ins to carry Chinese punctuation through normalisation.
_PLACEHOLDERS = [chr(0xFDD0 + i) for i in range(len(ZH_PUNCTUATION_KEPT))]
NONCHARACTERS = r"[\x{FDD0}-\x{FDEF}]"


# ASCII, C1, CJK ideographs and common CJK punctuation are NFKC-stable (quick-check Yes, combining
# class 0): a row made only of them is already normalised and is skipped.
_NFKC_STABLE = (
    r"\x00-\x9F\x{3001}\x{3002}\x{3008}-\x{3011}\x{4E00}-\x{9FFF}\x{2014}\x{2018}\x{2019}\x{201C}\x{201D}"
)
_NFKC_UNSTABLE_ZH = rf"[^{_NFKC_STABLE}{ZH_PUNCTUATION_KEPT}]"


def chinese_turns(content: pl.Series, lang: pl.Series) -> pl.Series:
    """Boolean per row: is this turn's own text Chinese (`lang_expr` on the text; `lang` where it has no letters)."""
    # only turns holding both scripts need counting; the rest are decided by which script they hold
    han = content.str.contains(HAN_PATTERN).fill_null(False)
    latin = content.str.contains(LATIN_WORD_PATTERN).fill_null(False)
    zh = (han & ~latin) | (~han & ~latin & (lang == "zh").fill_null(False))
    both = (han & latin).arg_true()
    if len(both):
        frame = pl.DataFrame({"content": content.gather(both)})
        decided = frame.lazy().select(lang_expr("content") == "zh").collect().to_series()
        zh = zh.clone().scatter(both, decided)  # clone: scatter works in place
    return zh.alias("zh")


def normalize_width(content: pl.Series, lang: pl.Series) -> pl.Series:
    """NFKC on every row that could change; Chinese turns (by their own text, see `chinese_turns`, with
    `lang` the fallback label) keep the full-width punctuation ZH_PUNCTUATION_KEPT."""
    zh = chinese_turns(content, lang)
    need = content.str.contains(_NFKC_UNSTABLE_ZH) | (
        ~zh & content.str.contains_any(list(ZH_PUNCTUATION_KEPT))
    )
    rows = need.arg_true()
    if not len(rows):
        return content
    return content.clone().scatter(rows, _nfkc(content.gather(rows), zh.gather(rows)))


_PROTECT = str.maketrans(dict(zip(ZH_PUNCTUATION_KEPT, _PLACEHOLDERS, strict=True)))
_NON_WORD_RUN = re.compile(r"[^\w]+")  # punctuation, symbols and spaces between words (Han is \w)
_HAN_CHAR = re.compile(HAN_PATTERN)


def protect_near_han(text: str) -> str:
    """`text` with ZH_PUNCTUATION_KEPT marks hidden behind placeholders where they touch Chinese: in a run of
    non-word characters directly after or before a Han character ("What does 你好？" keeps "？", "ok，thx！" not)."""

    def run(match: re.Match[str]) -> str:
        before, after = text[match.start() - 1 : match.start()], text[match.end() : match.end() + 1]
        if _HAN_CHAR.fullmatch(before) or _HAN_CHAR.fullmatch(after):
            return match.group().translate(_PROTECT)
        return match.group()

    return _NON_WORD_RUN.sub(run, text)


def _map_unique(part: pl.Series, function: Callable[[str], str]) -> pl.Series:
    """`function` applied to each distinct string of `part` once (a few thousand calls, not one per row)."""
    unique = part.unique()
    converted = pl.Series([function(text) for text in unique.to_list()], dtype=pl.String)
    return part.replace_strict(unique, converted, return_dtype=pl.String)


def _nfkc(content: pl.Series, zh: pl.Series) -> pl.Series:
    # Chinese turns: every kept mark is protected; other turns that hold Chinese text: the marks touching it
    c = content.str.replace_all(NONCHARACTERS, "")
    all_protected = c.str.replace_many(list(ZH_PUNCTUATION_KEPT), _PLACEHOLDERS)
    c = pl.select(pl.when(zh).then(all_protected).otherwise(c)).to_series()
    mixed = (~zh & c.str.contains(HAN_PATTERN)).arg_true()
    c = _on_rows(c, mixed, lambda part: _map_unique(part, protect_near_han))
    restored = c.str.normalize("NFKC").str.replace_many(_PLACEHOLDERS, list(ZH_PUNCTUATION_KEPT))
    return restored.alias(content.name)


# ----------------------------------------------------------------------------------- rule 5: t2s
def simplify_chinese(content: pl.Series) -> pl.Series:
    """Traditional -> simplified (`chatforge.data.lang.to_simplified`, OpenCC t2s) on every row holding a
    Han character, whatever the row's language; each distinct text goes through the converter once."""

    return _on_rows(
        content, content.str.contains(HAN_PATTERN).arg_true(), lambda part: _map_unique(part, to_simplified)
    )


# ---------------------------------------------------------------------------- rule 6: whitespace
def collapse_whitespace(content: pl.Series) -> pl.Series:
    def rule(part: pl.Series) -> pl.Series:
        return (
            part.str.replace_all(r"\r\n?", "\n")
            .str.replace_all(r"[^\S\n]+", " ")
            .str.replace_all(r" ?\n[\s]*", "\n")
            .str.strip_chars()
        )

    return _on_rows(content, content.str.contains(r"^\s|\s$|\s\s|[^\S ]").arg_true(), rule)


# ------------------------------------------------------------------------------ rule 7: synonyms
HAN_RUNS = r"\p{Han}+|\P{Han}+"
HAN_ONLY = r"^\p{Han}+$"


def _word_pattern(variant: str) -> str:
    # \b only where the variant starts/ends with a word character ("ok!" must still match before a space)
    left = r"\b" if re.match(r"\w", variant[0]) else ""
    right = r"\b" if re.match(r"\w", variant[-1]) else ""
    return f"{left}{re.escape(variant)}{right}"


def split_synonyms(synonyms: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(Chinese-run variants -> canonical, [(word-boundary regex, canonical)] for every other variant).

    One regex per canonical form, longest alternative first; sorted so the order never depends on the file.
    """
    variants = sorted(synonyms)
    han_only = pl.Series(variants, dtype=pl.String).str.contains(HAN_ONLY).to_list()
    runs = {v: synonyms[v] for v, is_han in zip(variants, han_only, strict=True) if is_han}
    by_canonical: dict[str, list[str]] = {}
    for v, is_han in zip(variants, han_only, strict=True):
        if not is_han:
            by_canonical.setdefault(synonyms[v], []).append(v)
    words = []
    for canonical in sorted(by_canonical):
        alternatives = sorted(by_canonical[canonical], key=lambda v: (-len(v), v))
        words.append(("(?:" + "|".join(_word_pattern(v) for v in alternatives) + ")", canonical))
    return runs, words


def normalize_synonyms(content: pl.Series, *, synonyms: Mapping[str, str]) -> pl.Series:
    if not synonyms:
        return content
    runs, words = split_synonyms(synonyms)
    out = content.clone()  # scatter works in place; the caller's series must stay as it was
    if runs:
        # only rows holding a variant somewhere are cut into Chinese / non-Chinese runs and looked up
        rows = content.str.contains_any(list(runs)).arg_true()
        tokens = pl.DataFrame({"row": rows, "tok": content.gather(rows).str.extract_all(HAN_RUNS)}).explode(
            "tok"
        )
        tok = pl.col("tok")
        joined = tokens.group_by("row", maintain_order=True).agg(
            tok.replace_strict(list(runs), list(runs.values()), default=tok).str.join("")
        )
        out.scatter(joined["row"], joined["tok"])
    if words:
        latin = [v for v in synonyms if v not in runs]

        def rule(part: pl.Series) -> pl.Series:
            for pattern, canonical in words:
                part = part.str.replace_all(pattern, canonical.replace("$", "$$"))
            return part

        out = _on_rows(out, out.str.contains_any(latin).arg_true(), rule)
    return out


# ----------------------------------------------------------------------------------- rule 8: pii
# The separators people put between the groups of a number (see rule 8 in the module docstring).
_SPACE = "[ \u00a0\u3000]"  # space, no-break space, ideographic space
_DASH_DOT = "[\\-.\u2010-\u2015\u2212－．]"  # - . ‐ ‑ ‒ – — ― − － ．
SEP_MARK = rf"{_SPACE}{{0,2}}{_DASH_DOT}{_SPACE}{{0,2}}"  # a hyphen, dash or dot, spaces around it
SEP = rf"(?:{SEP_MARK}|{_SPACE}{{1,2}})"
_OPEN, _CLOSE = r"[(（]", r"[)）]"
_PLUS = r"[+＋]"

_LOCAL, _LABEL = r"[A-Za-z0-9._%+\-]+", r"[A-Za-z0-9\-]+"
_AT = rf"{_SPACE}{{0,2}}(?:[@＠]|[\[(](?i:at)[\])]){_SPACE}{{0,2}}"
_DOT = rf"{_SPACE}{{0,2}}(?:[.．]|[\[(](?i:dot)[\])]){_SPACE}{{0,2}}"
COMMON_TLDS = "com|net|org|edu|gov|mil|int|info|biz|io|co|me|cn|hk|tw|mo|jp|kr|sg|uk|us|ca|au|de|fr"
# the tags mask_pii writes in place of a value; a served answer never shows one the dialogue lacks
PII_TAGS: tuple[str, ...] = ("<PHONE>", "<EMAIL>", "<ID>", "<CARD>")


def unfilled_pii(text: str, messages: Sequence[Mapping[str, str]]) -> bool:
    """True when `text` shows a PII mask tag (PII_TAGS) that no message of the dialogue holds.

    Trained on masked data, a model answers "电话是<PHONE>。" where the answer needs a number it
    does not have (CrossWOZ: 16 of 150 served zh answers). Such a tag never reaches a user
    (chatforge.runtime.hybrid) and such a reference is not scored (chatforge.runtime.quality
    .answer_samples). A tag the dialogue itself holds (a masked test turn) may be repeated."""
    said = " ".join(m.get("content", "") or "" for m in messages)
    return any(tag in text and tag not in said for tag in PII_TAGS)
EMAIL = (
    rf"{_LOCAL}[@＠]{_LABEL}(?:[.．]{_LABEL})*[.．][A-Za-z]{{2,}}"  # written as usual
    rf"|{_LOCAL}{_AT}{_LABEL}(?:{_DOT}{_LABEL})*{_DOT}(?i:{COMMON_TLDS})\b"  # spaced or spelled out
)
EMAIL_CANDIDATE = r"[@＠]|[\[(](?i:at)[\])]"
_PHONE_FORMS = (
    rf"(?:(?:{_OPEN}(?:{_PLUS}|00)86{_CLOSE}|(?:{_PLUS}|00)86){SEP}?)?1[3-9]\d(?:{SEP}?\d{{4}}){{2}}"  # CN mobile
    rf"|{_PLUS}[1-9]\d{{0,2}}{SEP}?(?:{_OPEN}\d{{1,4}}{_CLOSE}{SEP}?)?\d{{2,4}}(?:{SEP}?\d{{2,4}}){{1,4}}"  # +intl
    rf"|(?:{_OPEN}[2-9]\d{{2}}{_CLOSE}{SEP}?|[2-9]\d{{2}}{SEP_MARK})\d{{3}}{SEP_MARK}\d{{4}}"  # North American
    rf"|{_OPEN}0\d{{2,3}}{_CLOSE}{SEP}?\d{{7,8}}|0\d{{2,3}}{SEP}\d{{7,8}}|0\d{{2,3}}{SEP_MARK}\d{{3,4}}{SEP_MARK}\d{{4}}"  # landline
)
# No lookaround in the regex engine: the neighbours are captured and put back, and the replacement
# runs twice so that two numbers sharing one separator ("138..., 139...") are both masked.
PHONE = rf"(^|[^0-9A-Za-z+＋])(?:{_PHONE_FORMS})($|[^0-9A-Za-z])"
# every phone form above contains one of these
PHONE_CANDIDATE = rf"{_PLUS}[1-9]|\d{{4}}|{_OPEN}[0-9]|\d{{3}}{SEP_MARK}\d{{3}}"
# ID and card numbers written in groups (IDs 6-8-4, 6-4-4-4, 4-4-4-4-2; cards 4-6-5, 4-4-4-4(-1..3))
NUMBER_GROUPED = (
    rf"\d{{6}}{SEP}\d{{8}}{SEP}\d{{3}}[\dXx]|\d{{6}}{SEP}\d{{4}}{SEP}\d{{4}}{SEP}\d{{3}}[\dXx]"
    rf"|\d{{4}}{SEP}\d{{6}}{SEP}\d{{5}}|\d{{4}}(?:{SEP}\d{{4}}){{2,3}}(?:{SEP}\d{{1,3}}[Xx]?)?"
)
NUMBER_CANDIDATE = rf"\d{{13}}|{NUMBER_GROUPED}"
NUMBER_TOKENS = rf"{NUMBER_GROUPED}|\d+[Xx]?|\D+"
NOT_DIGIT_OR_X = r"[^\dXx]"  # what is left out of a number token before it is judged: its separators
ID_SHAPE = r"^[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]$"
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
CARD_SHAPE = r"^[3-6]\d{12,18}$"


def mask_emails(content: pl.Series) -> pl.Series:
    return _on_rows(
        content,
        content.str.contains(EMAIL_CANDIDATE).arg_true(),
        lambda part: part.str.replace_all(EMAIL, "<EMAIL>"),
    )


def mask_phones(content: pl.Series) -> pl.Series:
    return _on_rows(
        content,
        content.str.contains(PHONE_CANDIDATE).arg_true(),
        lambda part: part.str.replace_all(PHONE, "${1}<PHONE>${2}").str.replace_all(PHONE, "${1}<PHONE>${2}"),
    )


def _digit(number: pl.Expr, position: int) -> pl.Expr:
    """The decimal digit `position` places from the right of an unsigned integer column."""
    return (number // 10**position) % 10


def is_id_number(tok: pl.Series) -> pl.Series:
    """Shape (region, birth date, sequence) and the ISO 7064 MOD 11-2 check character; separators between
    groups (SEP) are ignored."""
    tok = tok.str.replace_all(NOT_DIGIT_OR_X, "")
    # integer maths on the first 17 digits beats 17 string slices; each column is materialised once
    body = tok.str.slice(0, 17).cast(pl.UInt64, strict=False)
    frame = pl.DataFrame({"tok": tok, "body": body})
    total = pl.sum_horizontal(_digit(pl.col("body"), 16 - i) * w for i, w in enumerate(ID_WEIGHTS)) % 11
    expected = total.replace_strict(list(range(11)), list(ID_CHECK), return_dtype=pl.String)
    ok = pl.col("tok").str.contains(ID_SHAPE) & (
        pl.col("tok").str.slice(17, 1).str.to_uppercase() == expected
    )
    return frame.select(ok.fill_null(False)).to_series().alias("is_id")


def is_card_number(tok: pl.Series) -> pl.Series:
    """13-19 digits (separators between groups ignored), issuer digit 3-6, Luhn checksum."""
    digits = tok.str.replace_all(NOT_DIGIT_OR_X, "")
    number = digits.str.slice(0, 19).cast(pl.UInt64, strict=False)  # 19 digits fit in a u64
    frame = pl.DataFrame({"digits": digits, "number": number})
    frame = frame.with_columns(_digit(pl.col("number"), k).alias(f"d{k}") for k in range(19))
    # every second digit from the right is doubled, and 2d > 9 counts as 2d - 9
    d = [pl.col(f"d{k}") for k in range(19)]
    terms = [d[k] * 2 - (d[k] >= 5).cast(pl.UInt64) * 9 if k % 2 else d[k] for k in range(19)]
    luhn_ok = pl.sum_horizontal(terms) % 10 == 0
    ok = pl.col("digits").str.contains(CARD_SHAPE) & luhn_ok
    return frame.select(ok.fill_null(False)).to_series().alias("is_card")


def mask_numbers(content: pl.Series, *, ids: bool = True, cards: bool = True) -> tuple[pl.Series, int, int]:
    """Mask ID and card numbers; returns (content, rows with an ID masked, rows with a card masked).

    Rows with a long digit run are cut into digit/non-digit tokens (their concatenation is the row),
    each token is judged with vectorised checksums, and the rows are joined back.
    """
    rows = content.str.contains(NUMBER_CANDIDATE).arg_true()
    if not len(rows) or not (ids or cards):
        return content, 0, 0
    tokens = pl.DataFrame({"row": rows, "tok": content.gather(rows).str.extract_all(NUMBER_TOKENS)}).explode(
        "tok"
    )
    tok, row = pl.col("tok"), pl.col("row")
    same_row_before, same_row_after = row.shift(1) == row, row.shift(-1) == row
    before = pl.when(same_row_before).then(tok.shift(1).str.slice(-1)).otherwise(pl.lit(""))
    after = pl.when(same_row_after).then(tok.shift(-1).str.slice(0, 1)).otherwise(pl.lit(""))
    alone = ~before.str.contains("[0-9A-Za-z]") & ~after.str.contains("[0-9A-Za-z]")
    tokens = tokens.with_row_index("i")
    # checksums only for the few tokens that could be a number at all
    plausible = tokens.filter(alone & tok.str.len_chars().is_between(13, 48) & tok.str.contains(r"^\d"))
    plausible = plausible.select("i").with_columns(
        is_id=is_id_number(plausible["tok"]) & ids, is_card=is_card_number(plausible["tok"]) & cards
    )
    is_id = (
        pl.repeat(False, tokens.height, eager=True).alias("is_id").scatter(plausible["i"], plausible["is_id"])
    )
    is_card = pl.repeat(False, tokens.height, eager=True).alias("is_card")
    is_card.scatter(plausible["i"], plausible["is_card"] & ~plausible["is_id"])
    judged = tokens.with_columns(is_id, is_card)
    masked = (
        pl.when(pl.col("is_id"))
        .then(pl.lit("<ID>"))
        .when(pl.col("is_card"))
        .then(pl.lit("<CARD>"))
        .otherwise(tok)
    )
    joined = judged.group_by("row", maintain_order=True).agg(
        masked.str.join("").alias("tok"), pl.col("is_id").any(), pl.col("is_card").any()
    )
    out = content.clone().scatter(joined["row"], joined["tok"])  # a copy: scatter works in place
    return out, int(joined["is_id"].sum()), int(joined["is_card"].sum())


# ----------------------------------------------------------- rule 8: Taiwan / Hong Kong forms
# Written for Python's `re` (lookarounds, a check per match); only the few rows holding a candidate run it.
_NOT_AFTER = "(?<![0-9A-Za-z+＋])"
_NOT_BEFORE = "(?![0-9A-Za-z])"
_HK_SPACE = "[ \u00a0\u3000]"
# TW mobiles 09xx: 0912-345-678, 0912 345 678, 0912345678, 0912-345678 (+886 912 345 678 is an
# international number above). HK 8-digit numbers starting 2,3,5,6,7,9 only in the space form 9123 4567
# standing apart from other digit groups (not inside "2024 0520 1234 5678"), or after an 852 prefix in
# parentheses or with 00 ((852) 9123-4567, 00852 9123 4567; +852 ... is international above). The
# hyphen form 9123-4567 alone is NOT masked: it reads as a range (2023-2024, 3000-5000).
REGIONAL_PHONE = (
    rf"{_NOT_AFTER}(?:"
    rf"09\d{{2}}(?:{SEP}?\d{{3}}{SEP}?\d{{3}}|{SEP}?\d{{6}})"
    rf"|(?:{_OPEN}{_PLUS}?852{_CLOSE}|00852){SEP}?[235679]\d{{3}}{SEP}?\d{{4}}"
    rf"|(?<!\d{_HK_SPACE})(?<!\d{_HK_SPACE}{{2}})(?<!\d{_DASH_DOT})[235679]\d{{3}}{_HK_SPACE}{{1,2}}\d{{4}}"
    rf"(?!{_HK_SPACE}{{1,2}}\d)(?!{_DASH_DOT}\d)"
    rf"){_NOT_BEFORE}"
)
REGIONAL_PHONE_CANDIDATE = rf"09\d{{2}}|[235679]\d{{3}}{_HK_SPACE}{{1,2}}\d{{4}}|852"
# TW national IDs A123456789 (letter, 1 or 2, 8 digits, valid check digit); HK IDs A123456(7) or
# AB123456(A) with the check character in (ASCII or full-width) parentheses, or written without them
# (A1234563) when the check character is valid.
REGIONAL_ID = (
    "(?<![0-9A-Za-z])(?:(?P<tw>[A-Za-z][12]\\d{8})|(?P<hk>[A-Za-z]{1,2}\\d{6})(?:[(（](?P<hkp>[0-9Aa])[)）]|(?P<hkc>[0-9Aa])(?![0-9A-Za-z])))"
    "(?![0-9A-Za-z])"
)
REGIONAL_ID_CANDIDATE = "[A-Za-z][0-9]{6}"
_TW_LETTERS = "ABCDEFGHJKLMNPQRSTUVXYWZIO"  # A=10, B=11, ... in the official order


def is_tw_id(text: str) -> bool:
    """Letter + [12] + 8 digits with the ROC national ID check digit (A123456789 is valid)."""
    code = _TW_LETTERS.index(text[0].upper()) + 10
    digits = [code // 10, code % 10, *map(int, text[1:])]
    return sum(d * w for d, w in zip(digits, (1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1), strict=True)) % 10 == 0


def hk_check_char(body: str) -> str:
    """The check character of an HK ID body (1-2 letters + 6 digits): A123456 -> "3"."""
    letters = body[:-6].upper().rjust(2)
    values = [36 if c == " " else ord(c) - 55 for c in letters] + [int(c) for c in body[-6:]]
    remainder = sum(v * w for v, w in zip(values, range(9, 1, -1), strict=True)) % 11
    return "0" if remainder == 0 else "A" if remainder == 1 else str(11 - remainder)


_REGIONAL_ID = re.compile(REGIONAL_ID)
_REGIONAL_PHONE = re.compile(REGIONAL_PHONE)


def _regional_id_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _REGIONAL_ID.finditer(text):
        if m["tw"]:
            ok = is_tw_id(m["tw"])
        elif m["hkp"]:
            ok = True  # the parenthesised check character marks an HK ID whatever its value
        else:
            ok = hk_check_char(m["hk"]) == m["hkc"].upper()
        if ok:
            spans.append(m.span())
    return spans


def _replace_spans(text: str, spans: list[tuple[int, int]], tag: str) -> str:
    for start, end in reversed(spans):
        text = text[:start] + tag + text[end:]
    return text


def mask_regional_ids(content: pl.Series) -> pl.Series:
    """TW national IDs and HK IDs -> <ID> (see REGIONAL_ID)."""
    return _on_rows(
        content,
        content.str.contains(REGIONAL_ID_CANDIDATE).arg_true(),
        lambda part: pl.Series(
            [_replace_spans(t, _regional_id_spans(t), "<ID>") for t in part.to_list()], dtype=pl.String
        ),
    )


def mask_regional_phones(content: pl.Series) -> pl.Series:
    """TW mobiles and HK 8-digit numbers -> <PHONE> (see REGIONAL_PHONE)."""
    return _on_rows(
        content,
        content.str.contains(REGIONAL_PHONE_CANDIDATE).arg_true(),
        lambda part: part.map_elements(lambda t: _REGIONAL_PHONE.sub("<PHONE>", t), return_dtype=pl.String),
    )


# ------------------------------------------------------- rule 8 on full-width text (nfkc off)
# Masking does not depend on the nfkc switch: a turn holding full-width digits, letters or ＠ is matched
# on a width-folded copy (same length, ＡＢＣ１２３＠ -> ABC123@) and the spans found are masked in
# the original, which keeps its full-width characters elsewhere.
WIDE_PII_CHAR = "[０-９Ａ-Ｚａ-ｚ＠]"
_FOLD_WIDTH = str.maketrans({chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)})
_EMAIL_RE = re.compile(EMAIL)
_PHONE_RE = re.compile(rf"{_NOT_AFTER}(?:{_PHONE_FORMS}){_NOT_BEFORE}")
_NUMBER_TOKENS_RE = re.compile(NUMBER_TOKENS)
_ALNUM = re.compile("[0-9A-Za-z]")


def _number_spans(text: str, *, ids: bool, cards: bool) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(ID spans, card spans): mask_numbers' token rule on one text."""
    tokens = [(m.group(), m.span()) for m in _NUMBER_TOKENS_RE.finditer(text)]
    plausible = []
    for k, (tok, span) in enumerate(tokens):
        before = tokens[k - 1][0][-1:] if k else ""
        after = tokens[k + 1][0][:1] if k + 1 < len(tokens) else ""
        if (
            not _ALNUM.match(before)
            and not _ALNUM.match(after)
            and 13 <= len(tok) <= 48
            and tok[:1].isascii()
            and tok[:1].isdigit()
        ):
            plausible.append((tok, span))
    if not plausible:
        return [], []
    toks = pl.Series([t for t, _ in plausible], dtype=pl.String)
    is_id = (is_id_number(toks) & ids).to_list()
    is_card = (is_card_number(toks) & cards).to_list()
    id_spans = [span for (_, span), i in zip(plausible, is_id, strict=True) if i]
    card_spans = [span for (_, span), i, c in zip(plausible, is_id, is_card, strict=True) if c and not i]
    return id_spans, card_spans


def mask_text_wide(text: str, kinds: set[str]) -> tuple[str, set[str]]:
    """Rule 8 on one text, matched on its width-folded copy; returns (masked text, kinds masked)."""
    original, folded = text, text.translate(_FOLD_WIDTH)
    masked: set[str] = set()

    def apply(kind: str, spans: list[tuple[int, int]], tag: str) -> None:
        nonlocal original, folded
        if spans:
            original, folded = _replace_spans(original, spans, tag), _replace_spans(folded, spans, tag)
            masked.add(kind)

    if "email" in kinds:
        apply("email", [m.span() for m in _EMAIL_RE.finditer(folded)], "<EMAIL>")
    if kinds & {"id_number", "card"}:
        id_spans, card_spans = _number_spans(folded, ids="id_number" in kinds, cards="card" in kinds)
        spans = sorted([(s, "<ID>") for s in id_spans] + [(s, "<CARD>") for s in card_spans])
        for span, tag in reversed(spans):
            apply("id_number" if tag == "<ID>" else "card", [span], tag)
    if "id_number" in kinds:
        apply("id_number", _regional_id_spans(folded), "<ID>")
    if "phone" in kinds:
        apply("phone", [m.span() for m in _PHONE_RE.finditer(folded)], "<PHONE>")
        apply("phone", [m.span() for m in _REGIONAL_PHONE.finditer(folded)], "<PHONE>")
    return original, masked


def mask_pii_content(content: pl.Series, kinds: Collection[str]) -> tuple[pl.Series, dict[str, int]]:
    """Rule 8 on a column of texts: the PII `kinds` (email, id_number, card, phone) masked, in this
    order: emails, mainland ID / card numbers, TW and HK IDs, phones (mainland, TW, HK). Turns holding
    full-width digits, letters or ＠ are matched on a width-folded copy whatever `clean.nfkc` says.
    The one masking path: the clean stage and the store (chatforge.serving.privacy) both call it.

    Returns (masked content, rows masked per kind: masked_email, masked_id_number, masked_card,
    masked_phone)."""
    kinds = set(kinds)
    counts = dict.fromkeys(("masked_email", "masked_id_number", "masked_card", "masked_phone"), 0)
    # turns with full-width digits/letters are masked one by one on a folded copy
    wide = content.str.contains(WIDE_PII_CHAR).arg_true()
    wide_texts = content.gather(wide).to_list()
    if len(wide):
        content = content.clone().scatter(wide, pl.Series([""] * len(wide), dtype=pl.String))
    if "email" in kinds:
        new = mask_emails(content)
        counts["masked_email"], content = int((new != content).sum()), new
    if kinds & {"id_number", "card"}:
        content, counts["masked_id_number"], counts["masked_card"] = mask_numbers(
            content, ids="id_number" in kinds, cards="card" in kinds
        )
    if "id_number" in kinds:
        regional = mask_regional_ids(content)
        counts["masked_id_number"] += int(((regional != content) & (~content.str.contains("<ID>"))).sum())
        content = regional
    if "phone" in kinds:
        new = mask_regional_phones(mask_phones(content))
        counts["masked_phone"], content = int((new != content).sum()), new
    if len(wide):
        results = [mask_text_wide(t, kinds) for t in wide_texts]
        content = content.clone().scatter(wide, pl.Series([r[0] for r in results], dtype=pl.String))
        for key, kind in (("masked_email", "email"), ("masked_id_number", "id_number"),
                          ("masked_card", "card"), ("masked_phone", "phone")):  # fmt: skip
            counts[key] += sum(kind in r[1] for r in results)
    return content, counts


# ------------------------------------------------------------------------------------- dedup
FOLD = r"[\p{P}\p{S}\p{Z}\p{C}\s]+"


def duplicate_ids(turns: pl.DataFrame, *, near: bool) -> pl.Series:
    """Ids of conversations equal (exactly, or after folding) to one with a smaller id."""
    text = pl.col("content")
    if near:
        text = text.str.replace_all(FOLD, "").str.to_lowercase()
    # a conversation's signature is its (roles, texts) lists in turn order; lists compare exactly
    signatures = (
        turns.sort(["conversation_id", "turn"])
        .group_by("conversation_id", maintain_order=True)
        .agg(pl.col("role"), text.alias("text"))
    )
    return signatures.filter(~pl.struct("role", "text").is_first_distinct())["conversation_id"]


# ------------------------------------------------------------------------------------ the stage
COUNT_KEYS = (
    "rows_in", "conversations_in", "rows_out", "conversations_out",
    "changed_html", "changed_replacement_char", "replacement_chars_removed", "changed_control_symbols",
    "changed_nfkc", "changed_t2s", "changed_whitespace", "changed_synonyms",
    "masked_email", "masked_id_number", "masked_card", "masked_phone",
    "dropped_empty", "dropped_length", "dropped_exact_duplicate", "dropped_near_duplicate",
)  # fmt: skip


def clean_turns(
    turns: pl.DataFrame, *, params: CleanParams, synonyms: Mapping[str, str] | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Apply every enabled rule; returns the cleaned turns (sorted) and flat counts (see COUNT_KEYS).

    Rows-changed counts are per rule in the order above; drop counts are conversations.
    """
    frame = sort_turns(conform(turns))
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["rows_in"], counts["conversations_in"] = frame.height, frame["conversation_id"].n_unique()
    content = frame["content"].fill_null("")
    lang = frame["lang"].fill_null("")

    def apply(key: str, new: pl.Series) -> None:
        nonlocal content
        counts[key] = int((new != content).sum())
        log.info("%s: %d rows", key, counts[key])
        content = new

    if params.strip_html:
        apply("changed_html", strip_html(content))
    if params.remove_control:
        counts["replacement_chars_removed"] = int(
            content.str.count_matches(REPLACEMENT_CHAR, literal=True).sum()
        )
        apply("changed_replacement_char", remove_replacement_chars(content))
        apply("changed_control_symbols", remove_control_symbols(content, keep_emoji=params.keep_emoji))
    if params.nfkc:
        apply("changed_nfkc", normalize_width(content, lang))
    if params.traditional_to_simplified:
        apply("changed_t2s", simplify_chinese(content))
    apply("changed_whitespace", collapse_whitespace(content))
    if synonyms:
        apply("changed_synonyms", normalize_synonyms(content, synonyms=synonyms))
    if params.mask_pii:
        content, masked = mask_pii_content(content, params.pii_kinds)
        counts.update(masked)
        for key, n in masked.items():
            log.info("%s: %d rows", key, n)

    frame = frame.with_columns(content=content)
    n = pl.col("content").str.len_chars()
    flags = frame.group_by("conversation_id").agg(
        empty=(n == 0).any(), out_of_bounds=((n < params.min_chars) | (n > params.max_chars)).any()
    )
    empty = flags.filter("empty")["conversation_id"]
    length = flags.filter(~pl.col("empty") & pl.col("out_of_bounds"))["conversation_id"]
    counts["dropped_empty"], counts["dropped_length"] = empty.len(), length.len()
    frame = frame.filter(~pl.col("conversation_id").is_in(pl.concat([empty, length]).implode()))
    for key, enabled, near in (
        ("dropped_exact_duplicate", params.dedup_exact, False),
        ("dropped_near_duplicate", params.dedup_near, True),
    ):
        if enabled:
            dups = duplicate_ids(frame, near=near)
            counts[key] = dups.len()
            frame = frame.filter(~pl.col("conversation_id").is_in(dups.implode()))
    counts["rows_out"], counts["conversations_out"] = frame.height, frame["conversation_id"].n_unique()
    log.info("kept %d of %d conversations", counts["conversations_out"], counts["conversations_in"])
    return sort_turns(frame), counts


__all__ = [
    "COUNT_KEYS",
    "LexiconError",
    "chinese_turns",
    "clean_turns",
    "collapse_whitespace",
    "decode_entities",
    "duplicate_ids",
    "load_synonyms",
    "mask_emails",
    "mask_numbers",
    "mask_pii_content",
    "mask_phones",
    "mask_regional_ids",
    "mask_regional_phones",
    "mask_text_wide",
    "normalize_synonyms",
    "normalize_width",
    "protect_near_han",
    "remove_control_symbols",
    "remove_replacement_chars",
    "simplify_chinese",
    "split_synonyms",
    "strip_html",
]
