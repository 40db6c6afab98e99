"""Metric functions: pure, small, and checked against hand-computed values in the tests.

BLEU and chrF come from sacrebleu (the reference implementation reviewers compare against): `zh`
tokenisation for Chinese (character-level for CJK), `13a` for English. Slot carry and degenerate
answers are chatforge's own definitions of what a user notices first: an order number dropped or
altered, an answer that loops, never ends, or breaks a character.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sacrebleu

BLEU_TOKENIZE = {"zh": "zh", "en": "13a"}


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, lang: str) -> float:
    """Corpus BLEU (0-100) of one hypothesis per reference, sacrebleu defaults otherwise."""
    _same_length(hypotheses, references)
    if not hypotheses:
        return float("nan")
    tokenize = BLEU_TOKENIZE.get(lang, "13a")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100): character n-grams, so it needs no word segmentation for Chinese."""
    _same_length(hypotheses, references)
    if not hypotheses:
        return float("nan")
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def normalise_whitespace(text: str) -> str:
    """Runs of whitespace -> one space, ends trimmed (what exact match compares)."""
    return " ".join(text.split())


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Share (0-1) of answers equal to their reference after whitespace normalisation; nan if none."""
    _same_length(hypotheses, references)
    if not hypotheses:
        return float("nan")
    same = sum(normalise_whitespace(h) == normalise_whitespace(r) for h, r in zip(hypotheses, references, strict=True))
    return same / len(hypotheses)


# digit runs of 4 or more (order numbers, phone tails, years) and the mask tags clean writes
SLOT_PATTERN = re.compile(r"(?<!\d)\d{4,}(?!\d)|<(?:PHONE|EMAIL|ID|CARD)>")


def slots_in(text: str, *, gazetteer: Sequence[str] = ()) -> set[str]:
    """The slot values found in `text`: digit runs of 4+ digits, mask tags (`<PHONE>` ...) and every
    gazetteer entry that occurs in it (plain substring; English compared case-insensitively)."""
    found = set(SLOT_PATTERN.findall(text))
    low = text.lower()
    found.update(e for e in gazetteer if e and (e in text or (e.isascii() and e.lower() in low)))
    return found


def _contains(answer: str, slot: str) -> bool:
    if slot.isdigit():  # 2024052012345 must appear as a whole number, not inside a longer one
        return re.search(rf"(?<!\d){slot}(?!\d)", answer) is not None
    return slot in answer or (slot.isascii() and slot.lower() in answer.lower())


def slot_carry_counts(context: str, reference: str, answer: str, *, gazetteer: Sequence[str] = ()) -> tuple[int, int]:
    """(carried, expected) for one answer: the slots that appear both in the dialogue so far
    (`context`) and in the reference answer are expected; carried are those the answer contains."""
    expected = slots_in(context, gazetteer=gazetteer) & slots_in(reference, gazetteer=gazetteer)
    return sum(_contains(answer, s) for s in expected), len(expected)


def slot_carry(counts: Sequence[tuple[int, int]]) -> float:
    """Share of expected slots carried over a set of answers (micro average); nan when no answer
    expected any slot."""
    expected = sum(n for _, n in counts)
    return sum(c for c, _ in counts) / expected if expected else float("nan")


# a unit of 1-12 characters repeated back to back at least this many times is a loop ("工客工客工客")
LOOP_REPEATS = 4
# ... unless the unit is one character, which may repeat a little (9999 in a price, "!!!")
LOOP_SAME_CHAR = 8
# an n-gram (characters for Chinese, words otherwise) seen this many times anywhere is a loop too
NGRAM_N, NGRAM_REPEATS = 4, 3
_REPEAT_UNIT = re.compile(rf"(.{{2,12}}?)\1{{{LOOP_REPEATS - 1},}}", re.DOTALL)
_REPEAT_CHAR = re.compile(rf"(.)\1{{{LOOP_SAME_CHAR - 1},}}", re.DOTALL)


def degenerate_reason(answer: str, *, finish_reason: str = "stop") -> str | None:
    """Why an answer is degenerate, or None for a clean one. Reasons, in order: `empty` (nothing
    but whitespace), `no_eos` (the length limit ended it, finish_reason "length"), `replacement_char`
    (U+FFFD: a broken multi-byte character), `loop` (a unit repeated back to back LOOP_REPEATS
    times, one character LOOP_SAME_CHAR times, or an n-gram NGRAM_REPEATS times)."""
    text = answer.strip()
    if not text:
        return "empty"
    if finish_reason == "length":
        return "no_eos"
    if "\ufffd" in text:
        return "replacement_char"
    if _REPEAT_CHAR.search(text) or _REPEAT_UNIT.search(text):
        return "loop"
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    units = [ch for ch in text if not ch.isspace()] if cjk * 2 >= len(text.split()) else text.lower().split()
    grams = [tuple(units[i : i + NGRAM_N]) for i in range(len(units) - NGRAM_N + 1)]
    if grams and Counter(grams).most_common(1)[0][1] >= NGRAM_REPEATS:
        return "loop"
    return None


_EN_TOKEN = re.compile(r"\w+|[^\w\s]")


def answer_units(text: str, *, lang: str) -> list[str]:
    """The units diversity is counted in: characters (whitespace left out) for Chinese, lowercased
    words and punctuation marks otherwise (sacrebleu's `zh` and `13a` tokenisers split alike)."""
    if lang == "zh":
        return [ch for ch in text if not ch.isspace()]
    return _EN_TOKEN.findall(text.lower())


def distinct_n(answers: Sequence[str], *, lang: str, n: int = 2) -> float:
    """distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models"): distinct n-grams / all n-grams over a set of answers, in
    `answer_units`. 0-1; a model that says one sentence to everything scores near 0, varied
    answers near 1. nan when the answers hold no n-gram."""
    grams: list[tuple[str, ...]] = []
    for text in answers:
        units = answer_units(text, lang=lang)
        grams += [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def top_answer_share(answers: Sequence[str]) -> float:
    """Share (0-1) of the answers equal to the most frequent one, after whitespace normalisation:
    the mode-collapse number (one generic sentence for every question gives 1.0). nan if none."""
    if not answers:
        return float("nan")
    counts = Counter(normalise_whitespace(a) for a in answers)
    return counts.most_common(1)[0][1] / len(answers)


def collapse_limit(reference_share: float, *, floor: float = 0.05, factor: float = 1.5) -> float:
    """The most a variant's top-answer share may be: max(floor, factor x the references' own
    top-answer share). The references set the scale: a FAQ whose test answers repeat one sentence
    10% of the time lets a model do so 15% of the time; real dialogue data (under 1%) gets the floor."""
    if math.isnan(reference_share):
        return floor
    return max(floor, factor * reference_share)


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token); nan when nothing was scored."""
    if n_tokens <= 0:
        return float("nan")
    return float(math.exp(total_nll / n_tokens))


@dataclass(frozen=True)
class ClassificationScores:
    accuracy: float
    macro_f1: float
    per_label_f1: dict[str, float]
    confusion: list[list[int]]  # rows: true label, columns: predicted label, in `labels` order
    labels: list[str]


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str], *, labels: Sequence[str]) -> ClassificationScores:
    """Accuracy, macro-F1 over `labels` (a label with no support and no prediction scores F1 = 0
    only if it appears in either list; labels absent from both are left out of the macro mean)."""
    _same_length(y_true, y_pred)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label list {list(labels)}")
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        confusion[index[t], index[p]] += 1
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    per_label: dict[str, float] = {}
    for i, label in enumerate(labels):
        if predicted[i] == 0 and actual[i] == 0:
            continue
        denom = predicted[i] + actual[i]
        per_label[label] = float(2 * tp[i] / denom) if denom else 0.0
    total = int(confusion.sum())
    accuracy = float(tp.sum() / total) if total else float("nan")
    macro = float(np.mean(list(per_label.values()))) if per_label else float("nan")
    return ClassificationScores(accuracy, macro, per_label, confusion.tolist(), list(labels))


def answer_confidence(token_logprobs: Sequence[float], *, first: int | None = None) -> float:
    """Confidence of a generated answer: the geometric-mean probability exp(mean log p) of its first
    `first` tokens (None: all), log-probabilities at temperature 1; 0.0 for an empty answer.

    Judging the first tokens lets a server decide before it streams the rest (chatforge serve's
    serve.confidence_tokens); evaluate reports the fallback rate this gives at each threshold."""
    taken = list(token_logprobs if first is None else token_logprobs[:first])
    if not taken:
        return 0.0
    return float(math.exp(sum(taken) / len(taken)))


def fallback_stats(fell_back: Sequence[bool], correct: Sequence[bool]) -> dict[str, float]:
    """Share of answers shown as the fallback message (`fell_back`, decided by
    chatforge.runtime.fallback.falls_back) and the accuracy on the answered part (nan when none is
    answered or there is no answer)."""
    _same_length(fell_back, correct)
    if not fell_back:
        return {"fallback_rate": float("nan"), "answered_accuracy": float("nan")}
    answered = ~np.asarray(fell_back, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    return {
        "fallback_rate": float(1.0 - answered.mean()),
        "answered_accuracy": float(ok[answered].mean()) if answered.any() else float("nan"),
    }


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95 in milliseconds (linear interpolation between order statistics, numpy's default)."""
    if not seconds:
        return {"latency_p50_ms": float("nan"), "latency_p95_ms": float("nan")}
    ms = np.asarray(seconds, dtype=float) * 1000.0
    return {"latency_p50_ms": float(np.percentile(ms, 50)), "latency_p95_ms": float(np.percentile(ms, 95))}


def retention(student_score: float, teacher_score: float, *, higher_is_better: bool = True) -> float:
    """Share of the teacher's quality the student keeps: s/t for scores, t/s for perplexity."""
    if higher_is_better:
        return float(student_score / teacher_score) if teacher_score else float("nan")
    return float(teacher_score / student_score) if student_score else float("nan")


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} hypotheses/predictions for {len(b)} references/labels")
