"""Metric functions: pure, small, and checked against hand-computed values in the tests.

BLEU and chrF come from sacrebleu (the reference implementation reviewers compare against): `zh`
tokenisation for Chinese (character-level for CJK), `13a` for English.
"""

from __future__ import annotations

import math
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


def fallback_stats(confidences: Sequence[float], correct: Sequence[bool], *, threshold: float) -> dict[str, float]:
    """Share of answers below the confidence threshold (served as the fallback message) and the
    accuracy on the answered part."""
    _same_length(confidences, correct)
    if not confidences:
        return {"fallback_rate": float("nan"), "answered_accuracy": float("nan")}
    conf = np.asarray(confidences, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    answered = conf >= threshold
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
