"""Generalisation: questions the model has never seen, and one rule for whether an answer is on-intent.

A test split drawn from the same source as training measures memory as much as understanding. A
paraphrase set (JSONL: `{"id", "lang", "intent", "style", "question"}`; the demo's is
`data/eval/demo_paraphrases.jsonl`, written by hand, none of it in the corpus) asks every variant
and the retrieval baseline new phrasings of the domain's intents, one question per conversation,
and counts how often the answer serves the question's intent.

The on-intent rule (`IntentJudge`), the same for every variant:
1. An answer that is empty or is one of the service's fallback messages serves no intent.
2. Otherwise its nearest training answer is found: the assistant turn of the train split, in the
   question's language, with the highest cosine of character 1-3-gram TF-IDF vectors (the
   retrieval baseline's representation, needs no Chinese word segmentation); ties go to the first
   in sorted text order.
3. That training answer serves intent I when it is over-represented in I's conversations: the
   share of I's conversations that contain it is at least its share among all conversations of the
   language (lift >= 1). A template answer belongs to its own intent; a closing "You're welcome"
   that ends many conversations belongs to `goodbye`, where it ends nearly all of them; a clarifying
   "What is your order number?" serves each intent that asks it more often than average.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatforge.metrics import normalise_whitespace
from chatforge.runtime.conversation import Conversation

STYLES = ("colloquial", "indirect", "misspelled", "multi_clause", "plain")


class ParaphraseError(ValueError):
    """A paraphrase set that cannot be used; the message names the file, line and fix."""


@dataclass(frozen=True)
class Question:
    id: str
    lang: str
    intent: str
    style: str
    question: str

    @property
    def prompt(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}]


def read_paraphrases(path: Path) -> list[Question]:
    """The questions of a paraphrase JSONL file, in file order. Raises ParaphraseError naming the
    line for a record that does not parse, lacks a field, or has a language other than zh/en."""
    if not path.is_file():
        raise ParaphraseError(f"{path}: paraphrase set not found; give evaluate a JSONL file of "
                              '{"id", "lang", "intent", "style", "question"} records (dvc.yaml, --paraphrases).')
    out: list[Question] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            q = Question(**{k: str(rec[k]) for k in ("id", "lang", "intent", "style", "question")})
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ParaphraseError(f"{path}:{n}: not a paraphrase record ({type(exc).__name__}: {str(exc)[:80]}); "
                                  'each line must be {"id", "lang", "intent", "style", "question"}') from None
        if q.lang not in ("zh", "en"):
            raise ParaphraseError(f"{path}:{n}: lang {q.lang[:20]!r} is not zh or en")
        out.append(q)
    return out


def paraphrase_subset(questions: Sequence[Question], per_lang: int | None) -> list[Question]:
    """At most `per_lang` questions per language (None: all, in file order): each language's
    intents take turns in the order they first appear, each giving its next question in file
    order, so a small subset still covers as many intents as it can. The result keeps file order.
    Deterministic: the same file and `per_lang` give the same questions."""
    if per_lang is None:
        return list(questions)
    keep: set[int] = set()
    for lang in ("zh", "en"):
        queues: dict[str, list[int]] = {}
        for i, q in enumerate(questions):
            if q.lang == lang:
                queues.setdefault(q.intent, []).append(i)
        taken, depth = 0, 0
        while taken < per_lang and any(depth < len(v) for v in queues.values()):
            for v in queues.values():
                if depth < len(v) and taken < per_lang:
                    keep.add(v[depth])
                    taken += 1
            depth += 1
    return [q for i, q in enumerate(questions) if i in keep]


class IntentJudge:
    """Which intents an answer serves, by the rule in this module's docstring.

    Fit on the train conversations that carry an intent label. `intents_of(answer, lang=)` returns
    the set (empty for an empty or fallback answer, or a language without labelled answers);
    `on_intent_rate(answers, questions)` the share of answers that serve their question's intent.
    Raises ValueError when no train conversation carries an intent."""

    def __init__(self, convs: Sequence[Conversation], *, fallbacks: Iterable[str] = ()) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.fallbacks = {normalise_whitespace(f) for f in fallbacks if f}
        labelled = [c for c in convs if c.intent]
        if not labelled:
            raise ValueError("the on-intent rule needs train conversations with intent labels; none have one")
        # per language: answer text -> {intent: conversations containing it}; conversations per intent
        having: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        per_intent: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for conv in labelled:
            lang = conv.lang if conv.lang in ("zh", "en") else "en"
            per_intent[lang][conv.intent] += 1  # type: ignore[index]
            for text in {normalise_whitespace(m["content"]) for m in conv.messages if m["role"] == "assistant"}:
                if text:
                    having[lang][text][conv.intent] += 1  # type: ignore[index]
        self._texts: dict[str, list[str]] = {}
        self._serves: dict[str, list[frozenset[str]]] = {}
        self._vectorizer, self._matrix = {}, {}
        for lang, by_text in having.items():
            total = sum(per_intent[lang].values())
            texts = sorted(by_text)
            serves = []
            for text in texts:
                overall = sum(by_text[text].values()) / total
                serves.append(frozenset(i for i, n in by_text[text].items() if n / per_intent[lang][i] >= overall))
            vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, lowercase=True)
            self._matrix[lang] = vec.fit_transform(texts)
            self._vectorizer[lang] = vec
            self._texts[lang], self._serves[lang] = texts, serves

    def nearest(self, answer: str, *, lang: str) -> str | None:
        """The nearest training answer of `lang` (None when the language has none)."""
        if lang not in self._texts:
            return None
        sim = (self._matrix[lang] @ self._vectorizer[lang].transform([answer]).T).toarray()[:, 0]
        return self._texts[lang][int(np.argmax(sim))]  # first maximum: sorted text order

    def intents_of(self, answer: str, *, lang: str) -> frozenset[str]:
        text = normalise_whitespace(answer)
        if not text or text in self.fallbacks or lang not in self._texts:
            return frozenset()
        sim = (self._matrix[lang] @ self._vectorizer[lang].transform([text]).T).toarray()[:, 0]
        if not sim.any():
            return frozenset()
        return self._serves[lang][int(np.argmax(sim))]

    def on_intent(self, answer: str, intent: str, *, lang: str) -> bool:
        return intent in self.intents_of(answer, lang=lang)

    def on_intent_rates(self, answers: Sequence[str], questions: Sequence[Question]) -> dict[str, float]:
        """{"paraphrase_on_intent_zh": share, "paraphrase_on_intent_en": share,
        "paraphrase_on_intent": share over both}; nan for a language without questions."""
        if len(answers) != len(questions):
            raise ValueError(f"got {len(answers)} answers for {len(questions)} questions")
        hits = {"zh": [], "en": []}  # type: dict[str, list[bool]]
        for a, q in zip(answers, questions, strict=True):
            hits[q.lang].append(self.on_intent(a, q.intent, lang=q.lang))
        out = {f"paraphrase_on_intent_{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
        both = hits["zh"] + hits["en"]
        out["paraphrase_on_intent"] = float(np.mean(both)) if both else float("nan")
        return out
