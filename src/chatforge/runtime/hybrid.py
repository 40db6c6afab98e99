"""Retrieval in the loop: when the model is unsure, answer with the team's own past answer.

A small model trained for minutes knows the phrasings it saw; a new phrasing makes it unsure, and
an unsure generation is usually a wrong one. Deployed customer-service systems combine the two
(AliMe Chat, Qiu et al. ACL 2017: retrieve candidates from past exchanges, rerank them with the
generative model, answer from retrieval when a candidate is good enough, generate otherwise). The
rule here, the same in `chatforge serve` and in evaluate:

1. The model generates; when its confidence (geometric-mean probability of the first
   serve.confidence_tokens tokens) reaches serve.confidence_threshold and its answer agrees with the
   team's history (its character 1-3-gram TF-IDF cosine to one of the candidates' answers below is
   at least `min_agreement`), its answer is served. A small model is often confident and wrong on a
   phrasing it has never seen: its answer then matches none of the past answers to similar questions.
2. Otherwise the `top_k` train exchanges nearest the prompt (the retrieval baseline's character
   1-3-gram TF-IDF cosine over the user turn and its context) are candidates. Each candidate's answer
   is moved into this dialogue (its slot values replaced by this dialogue's through the model's slot
   placeholders; a candidate that needs a value this dialogue never gave is left out) and scored by
   the model: the mean log-probability of its tokens after this prompt. The best scoring candidate
   is served.
3. When no candidate reaches `min_similarity` (nothing in the team's history resembles the
   question), an unconfident answer gives the fallback message and a confident one is kept.

Measured on the demo (int8, 150 test turns and 224 paraphrases per variant, README "Choosing a
base"): the agreement check at 0.5 takes paraphrase on-intent from 0.50 / 0.38 (zh / en, model
alone) to 0.70 / 0.66 and test BLEU from 69.1 / 62.4 to 70.6 / 65.0.

The exchanges travel inside the model folder (`retrieval.jsonl`, written by train from the train
split's original conversations and copied down the chain), so a folder answers the same wherever
it is opened. The `retrieval` variant of evaluate stays the plain top-1 baseline: it is the bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from chatforge.modeling.data import Conversation
from chatforge.params import ServeHybrid
from chatforge.runtime.index import read_index

Source = Literal["model", "retrieval", "fallback"]


@dataclass(frozen=True)
class Choice:
    text: str  # the candidate answer moved into this dialogue
    similarity: float  # its relevance to the prompt (Relevance.scores)
    score: float  # what chose it: relevance + rerank_weight x mean log-probability of its tokens after the prompt
    conversation_id: str  # where it came from


MIN_INTENT_EXCHANGES = 5  # an intent needs this many exchanges to be learned; fewer than 2 such intents: no prior


class Relevance:
    """How well each past exchange fits a prompt: the retrieval baseline's character TF-IDF cosine,
    plus `intent_weight` x P(the exchange's intent | the user turn) and, for the languages in
    `encoder_langs`, `encoder_weight` x the sentence-embedding cosine of the two user turns.

    The intent prior is a multinomial logistic regression (scikit-learn, C=10) on character 1-4-gram
    TF-IDF of the exchanges' user turns, labelled with their conversations' intents; it learns which
    n-grams mark an intent ("银联", "UnionPay" -> payment) where the nearest-neighbour lookup weighs
    every shared n-gram alike. It is fitted only when at least two intents have
    MIN_INTENT_EXCHANGES exchanges; exchanges without an intent get 0. The encoder is
    chatforge.runtime.encoder. Measured on the demo's paraphrase set (README, "Choosing a base"):
    the nearest past answer by TF-IDF alone is on-intent 0.64 zh / 0.68 en; with the defaults
    (intent_weight 0.5, encoder minilm-l6 for en at weight 2) 0.75 / 0.88.

    `scores(prompt, lang)` -> shape (len(bot.entries),), -inf for entries in another language when
    the prompt's language has any."""

    def __init__(self, bot: Any, settings: ServeHybrid) -> None:
        self.bot = bot
        self.settings = settings
        entries = bot.entries
        self.intents = [e.intent for e in entries]
        self.prior: Any = None
        counts: dict[str, int] = {}
        for intent in self.intents:
            if intent:
                counts[intent] = counts.get(intent, 0) + 1
        learned = sorted(k for k, n in counts.items() if n >= MIN_INTENT_EXCHANGES)
        if settings.intent_weight > 0 and len(learned) >= 2:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.linear_model import LogisticRegression

            rows = [i for i, intent in enumerate(self.intents) if intent in learned]
            self.prior_vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 4), sublinear_tf=True,
                                                    lowercase=True)
            x = self.prior_vectorizer.fit_transform([entries[i].user for i in rows])
            self.prior = LogisticRegression(C=10.0, max_iter=3000).fit(x, [self.intents[i] for i in rows])
            column = {c: j for j, c in enumerate(self.prior.classes_)}
            self.prior_column = np.asarray([column.get(intent or "", -1) for intent in self.intents])
        self.encoder: Any = None
        if settings.encoder and settings.encoder_weight > 0 and settings.encoder_langs:
            from chatforge.runtime.encoder import embed_unique, load_encoder

            self.encoder = load_encoder(settings.encoder)
            self.encoded = np.flatnonzero(np.isin(bot.langs, list(settings.encoder_langs)))  # only those languages
            self.embeddings = embed_unique(self.encoder, [entries[i].user for i in self.encoded])

    def scores(self, prompt: Sequence[dict[str, str]], *, lang: str) -> np.ndarray:
        sim = self.bot.scores(prompt)
        user = prompt[-1]["content"]
        if self.prior is not None:
            p = self.prior.predict_proba(self.prior_vectorizer.transform([user]))[0]
            sim = sim + self.settings.intent_weight * np.where(self.prior_column >= 0, p[self.prior_column], 0.0)
        if self.encoder is not None and lang in self.settings.encoder_langs and len(self.encoded):
            sim = sim.copy()
            sim[self.encoded] += self.settings.encoder_weight * (self.embeddings @ self.encoder.encode([user])[0])
        same = self.bot.langs == lang
        return np.where(same, sim, -np.inf) if same.any() else sim

    def top(self, prompt: Sequence[dict[str, str]], *, k: int, lang: str) -> list[tuple[Any, float]]:
        """The k most relevant entries with their relevance, best first (ties: earlier entry first)."""
        sim = self.scores(prompt, lang=lang)
        order = np.argsort(-sim, kind="stable")[:k]
        return [(self.bot.entries[int(i)], float(sim[int(i)])) for i in order if np.isfinite(sim[int(i)])]


class RetrievalInTheLoop:
    """Candidates from a folder's exchanges (Relevance), reranked with the folder's own model
    (module docstring).

    `generator` is the folder's generator (torch or ONNX, chatforge.modeling.generate); `choose`
    returns the best Choice for a prompt, or None when no candidate reaches min_similarity or can
    be moved into the dialogue."""

    def __init__(self, convs: Sequence[Conversation], generator: Any, settings: ServeHybrid) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        from chatforge.modeling.retrieval import RetrievalBot

        self.bot = RetrievalBot(convs)
        self.relevance = Relevance(self.bot, settings)
        self.generator = generator
        self.settings = settings
        self.answers = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, lowercase=True)
        self.answers.fit([e.answer for e in self.bot.entries])

    @classmethod
    def open(cls, folder: Path, generator: Any, settings: ServeHybrid) -> RetrievalInTheLoop | None:
        """The folder's retrieval-in-the-loop, or None when it carries no exchanges or it is off."""
        convs = read_index(folder) if settings.enabled else None
        return cls(convs, generator, settings) if convs else None

    def agreement(self, text: str, prompt: list[dict[str, str]], *, lang: str) -> float:
        """Highest character 1-3-gram TF-IDF cosine (0-1) of `text` to the answers of the `top_k`
        exchanges most relevant to the prompt; 0.0 when there are none."""
        ranked = self.relevance.top(prompt, k=self.settings.top_k, lang=lang)
        if not ranked or not text.strip():
            return 0.0
        past = self.answers.transform([e.answer for e, _ in ranked])
        return float((past @ self.answers.transform([text]).T).toarray().max())

    def choose(self, prompt: list[dict[str, str]], *, lang: str) -> Choice | None:
        from chatforge.modeling.quality import sequence_logprobs
        from chatforge.modeling.slots import codec_for

        ranked = self.relevance.top(prompt, k=self.settings.top_k, lang=lang)
        codec = codec_for(self.generator.tokenizer)
        prompt_ids, values = self.generator.encode_prompt(prompt)
        eos = self.generator.tokenizer.eos_token_id
        weight = self.settings.rerank_weight
        best: Choice | None = None
        for entry, sim in ranked:
            if sim < self.settings.min_similarity:
                continue
            answer = entry.answer
            if codec is not None:  # the candidate's own slot values -> placeholders -> this dialogue's
                own = codec.encode([*entry.messages, {"role": "assistant", "content": answer}])
                answer = own.messages[-1]["content"]
                needed = set(_placeholders(answer))
                if not needed <= set(values or {}):
                    continue
            answer_ids = self.generator.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not answer_ids:
                continue
            score = sim
            if weight > 0:
                ids = [*prompt_ids, *answer_ids, *([eos] if eos is not None else [])]
                score = sim + weight * float(np.mean(sequence_logprobs(self.generator, ids)[len(prompt_ids) - 1:]))
            if best is None or score > best.score:
                text = codec.decode(answer, values or {}) if codec is not None else answer
                best = Choice(text, float(sim), score, entry.conversation_id)
        return best


def _placeholders(text: str) -> list[str]:
    from chatforge.modeling.slots import PLACEHOLDER

    return [m.group(0) for m in PLACEHOLDER.finditer(text)]


def served_answer(text: str, confidence: float, *, threshold: float, prompt: list[dict[str, str]], lang: str,
                  loop: RetrievalInTheLoop | None, fallback: str) -> tuple[str, Source]:
    """What a user is shown for one generated answer (module docstring): the answer itself at or
    above `threshold` when it agrees with the past answers (or the check is off), else the reranked
    retrieval candidate, else `fallback` (an unconfident answer) or the answer (a confident one). A
    nan confidence (not generated) counts as confident."""
    confident = not confidence < threshold
    if confident and (loop is None or loop.settings.min_agreement <= 0
                      or loop.agreement(text, prompt, lang=lang) >= loop.settings.min_agreement):
        return text, "model"
    choice = loop.choose(prompt, lang=lang) if loop is not None else None
    if choice is not None:
        return choice.text, "retrieval"
    return (text, "model") if confident else (fallback, "fallback")
