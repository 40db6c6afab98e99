"""The committed demo paraphrase set (data/eval/demo_paraphrases.jsonl) is well formed, covers every
intent of the demo corpus in both languages and all five styles, and shares no text with the corpus."""

import json
import re
import unicodedata
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PARAPHRASES = ROOT / "data" / "eval" / "demo_paraphrases.jsonl"
CORPUS = ROOT / "data" / "raw" / "demo" / "conversations.json"

FIELDS = {"id", "lang", "intent", "style", "question"}
LANGS = ("zh", "en")
STYLES = {"colloquial", "indirect", "misspelled", "multi_clause", "plain"}
MIN_PER_LANG = 100
MIN_PER_INTENT_LANG = 5
MIN_CONTAINED = 6  # a corpus message this long (normalised) must not occur inside a question
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
MARKUP = re.compile(r"<[^>]*>|&#?\w+;")


def normalise(text: str) -> str:
    """NFKC, casefold, then drop whitespace, punctuation and symbols (Unicode categories P* and S*).

    Format characters (Cf: the zero-width spaces the corpus is sprinkled with) are dropped too,
    which only makes the overlap check stricter."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        ch
        for ch in text
        if not ch.isspace() and unicodedata.category(ch)[0] not in "PS" and unicodedata.category(ch) != "Cf"
    )


@cache
def rows() -> list[dict]:
    lines = PARAPHRASES.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@cache
def corpus() -> tuple[dict, ...]:
    return tuple(json.loads(CORPUS.read_text(encoding="utf-8"))["conversations"])


@cache
def corpus_messages() -> frozenset[str]:
    """Every message, user or assistant, normalised as is and with its HTML tags and entities removed."""
    out = set()
    for conv in corpus():
        for message in conv["messages"]:
            content = message["content"]
            out.add(normalise(content))
            out.add(normalise(MARKUP.sub("", content)))
    return frozenset(out)


def test_every_line_parses_with_exactly_the_fields():
    lines = PARAPHRASES.read_text(encoding="utf-8").splitlines()
    assert lines, "empty paraphrase file"
    for n, line in enumerate(lines, 1):
        row = json.loads(line)
        assert isinstance(row, dict), f"line {n} is not an object"
        assert set(row) == FIELDS, f"line {n}: fields {sorted(row)}"
        assert all(isinstance(row[k], str) for k in FIELDS), f"line {n}: non-string field"


def test_field_values_are_valid():
    intents = {conv["intent"] for conv in corpus()}
    for row in rows():
        assert row["lang"] in LANGS, row
        assert row["intent"] in intents, row
        assert row["style"] in STYLES, row
        assert row["question"].strip() == row["question"] and row["question"], row
        assert re.fullmatch(rf"{row['lang']}-\d{{3}}", row["id"]), row


def test_ids_unique_and_sorted():
    ids = [row["id"] for row in rows()]
    assert len(ids) == len(set(ids))
    for lang in LANGS:
        mine = [i for i in ids if i.startswith(f"{lang}-")]
        assert mine == [f"{lang}-{n:03d}" for n in range(1, len(mine) + 1)], f"{lang} ids not 001.. in order"


@pytest.mark.parametrize("lang", LANGS)
def test_enough_questions_per_language(lang):
    assert sum(row["lang"] == lang for row in rows()) >= MIN_PER_LANG


@pytest.mark.parametrize("lang", LANGS)
def test_every_corpus_intent_is_covered(lang):
    intents = {conv["intent"] for conv in corpus() if conv["lang"] == lang}
    assert len(intents) >= 14
    counts = Counter(row["intent"] for row in rows() if row["lang"] == lang)
    thin = {intent: counts[intent] for intent in intents if counts[intent] < MIN_PER_INTENT_LANG}
    assert not thin, f"{lang}: intents with fewer than {MIN_PER_INTENT_LANG} questions: {thin}"


@pytest.mark.parametrize("lang", LANGS)
def test_all_styles_occur(lang):
    assert {row["style"] for row in rows() if row["lang"] == lang} == STYLES


def test_language_sanity():
    for row in rows():
        has_han = bool(HAN.search(row["question"]))
        assert has_han == (row["lang"] == "zh"), row


def test_no_question_overlaps_the_corpus():
    messages = corpus_messages()
    long_messages = {m for m in messages if len(m) >= MIN_CONTAINED}
    haystack = "\x00".join(messages)
    problems = []
    for row in rows():
        q = normalise(row["question"])
        assert q, row
        if q in messages:
            problems.append((row["id"], "equals a corpus message"))
        elif q in haystack:
            problems.append((row["id"], "is part of a corpus message"))
        spans = ((i, j) for i in range(len(q)) for j in range(i + MIN_CONTAINED, len(q) + 1))
        inside = {q[i:j] for i, j in spans if q[i:j] in long_messages}
        if inside:
            problems.append((row["id"], f"contains corpus message(s) {sorted(inside)}"))
    assert not problems, problems


def test_normalise():
    assert normalise("Ｏｋ，  Thanks!\u200b 😊") == "okthanks"
    assert normalise("退款 进度？") == "退款进度"
