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
2. Otherwise the `top_k` train exchanges most relevant to the prompt (`Relevance`: the retrieval
   baseline's character TF-IDF cosine over the user turn and its context, plus an intent prior and
   sentence embeddings) are candidates. Each candidate's answer is moved into this dialogue (its
   slot values replaced by this dialogue's through the model's slot placeholders; a candidate that
   needs a value this dialogue never gave is left out) and scored: its relevance + `rerank_weight` x
   the model's mean log-probability of its tokens after this prompt. The best scoring candidate is
   served.
3. When no candidate reaches `min_similarity` (nothing in the team's history resembles the
   question), an unconfident answer gives the fallback message and a confident one is kept.

Measured on the demo (int8, 150 test turns and 224 paraphrases per variant, README "Choosing a
base"): the agreement check at 0.5 with TF-IDF candidates took paraphrase on-intent from 0.50 / 0.38
(zh / en, model alone) to 0.70 / 0.66; with the relevance below, 0.78 / 0.84 (retrieval: 0.64 /
0.68), test BLEU 70.4 / 63.4 (model alone 69.1 / 63.2).

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

from chatforge.data.clean import unfilled_pii
from chatforge.params import ServeHybrid
from chatforge.runtime.conversation import Conversation
from chatforge.runtime.fallback import falls_back
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
    MIN_INTENT_EXCHANGES exchanges, and used only for the languages where a held-out check on the
    data shows it picks closer answers (`_intent_prior`; `prior_langs`); exchanges without an
    intent get 0. The encoder is
    chatforge.runtime.encoder. Measured on the demo's paraphrase set (README, "Choosing a base"):
    the nearest past answer by TF-IDF alone is on-intent 0.64 zh / 0.68 en; with the defaults
    (intent_weight 0.5, encoder minilm-l6 for en at weight 2) 0.75 / 0.88.

    `scores(prompt, lang)` -> shape (len(bot.entries),), -inf for entries in another language when
    the prompt's language has any."""

    def __init__(self, bot: Any, settings: ServeHybrid) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.bot = bot
        self.settings = settings
        entries = bot.entries
        # the past answers as character 1-3-gram TF-IDF: the agreement check and the prior's held-out check
        self.answers = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, lowercase=True)
        answer_matrix = self.answers.fit_transform([e.answer for e in entries])
        self.prior: Any = None
        self.prior_langs: tuple[str, ...] = ()
        if settings.intent_weight > 0:
            fitted = _intent_prior(entries, bot, settings.intent_weight, answer_matrix)
            if fitted is not None:
                self.prior_vectorizer, self.prior, self.prior_column, self.prior_langs = fitted
        self.encoder: Any = None
        if settings.encoder and settings.encoder_weight > 0 and settings.encoder_langs:
            from chatforge.runtime.encoder import embed_unique, load_encoder

            self.encoder = load_encoder(settings.encoder)
            self.encoded = np.flatnonzero(np.isin(bot.langs, list(settings.encoder_langs)))  # only those languages
            self.embeddings = embed_unique(self.encoder, [entries[i].user for i in self.encoded])

    def scores(self, prompt: Sequence[dict[str, str]], *, lang: str) -> np.ndarray:
        sim = self.bot.scores(prompt)
        user = prompt[-1]["content"]
        if self.prior is not None and lang in self.prior_langs:
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


HELDOUT_SHARE = 5  # 1 in 5 conversations (by crc32 of the id) checks whether the prior helps
MAX_HELDOUT = 400  # held-out past questions per language
_PRIORS: dict[str, Any] = {}


def _fit_prior(texts: Sequence[str], labels: Sequence[str]) -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 4), sublinear_tf=True, lowercase=True)
    model = LogisticRegression(C=10.0, max_iter=3000).fit(vectorizer.fit_transform(texts), list(labels))
    return vectorizer, model


def _intent_prior(entries: Sequence[Any], bot: Any, weight: float,
                  a: Any) -> tuple[Any, Any, np.ndarray, tuple[str, ...]] | None:
    """The intent prior of Relevance, or None when fewer than two intents have MIN_INTENT_EXCHANGES
    exchanges or it helps no language.

    Whether it helps is measured per language on the data itself: the conversations whose crc32 id
    is 0 mod HELDOUT_SHARE are held out (up to MAX_HELDOUT past questions per language), a prior is
    fitted on the rest, and each held-out question is answered from the rest by TF-IDF alone and by
    TF-IDF + `weight` x prior; the prior is used for a language only when the answers it picks are
    closer (mean cosine of `a`, the entries' answers as character 1-3-gram TF-IDF rows) to the
    answers actually given. Intents that
    decide the answer (a FAQ's) pass: on the demo 0.558 -> 0.567 zh, 0.691 -> 0.713 en; topic-like
    intents do not: CrossWOZ's domains (餐馆, 酒店, ...) 0.265 -> 0.261, where the prior cost 3 BLEU.
    Fitted once per process for the same exchanges."""
    import hashlib
    import logging
    import zlib

    key = hashlib.sha256(repr([(e.conversation_id, e.lang, e.intent, e.user) for e in entries] + [weight])
                         .encode("utf-8")).hexdigest()
    if key in _PRIORS:
        return _PRIORS[key]
    counts: dict[str, int] = {}
    for e in entries:
        if e.intent:
            counts[e.intent] = counts.get(e.intent, 0) + 1
    learned = {k for k, n in counts.items() if n >= MIN_INTENT_EXCHANGES}
    result = None
    if len(learned) >= 2:
        held = np.asarray([zlib.crc32(e.conversation_id.encode("utf-8")) % HELDOUT_SHARE == 0 for e in entries])
        langs = []
        for lang in sorted(set(bot.langs.tolist())):
            pool = (~held) & (bot.langs == lang)
            rows = [i for i in np.flatnonzero(pool) if entries[i].intent in learned]
            queries = np.flatnonzero(held & (bot.langs == lang))[:MAX_HELDOUT]
            if len({entries[i].intent for i in rows}) < 2 or not len(queries):
                continue
            vectorizer, model = _fit_prior([entries[i].user for i in rows], [entries[i].intent for i in rows])
            column = {c: j for j, c in enumerate(model.classes_)}
            cols = np.asarray([column.get(e.intent or "", -1) for e in entries])
            probs = model.predict_proba(vectorizer.transform([entries[i].user for i in queries]))
            plain = with_prior = 0.0
            for q, p in zip(queries, probs, strict=True):
                sim = np.where(pool, bot.scores(list(entries[q].messages)), -np.inf)
                boosted = sim + weight * np.where(cols >= 0, p[np.maximum(cols, 0)], 0.0)
                plain += float((a[int(np.argmax(sim))] @ a[q].T).toarray()[0, 0])
                with_prior += float((a[int(np.argmax(boosted))] @ a[q].T).toarray()[0, 0])
            helps = with_prior > plain
            logging.getLogger(__name__).info(
                "intent prior %s for %s: %d held-out past questions, answer similarity %.3f without, %.3f with",
                "on" if helps else "off", lang, len(queries), plain / len(queries), with_prior / len(queries))
            if helps:
                langs.append(lang)
        if langs:
            rows = [i for i, e in enumerate(entries) if e.intent in learned]
            vectorizer, model = _fit_prior([entries[i].user for i in rows], [entries[i].intent for i in rows])
            column = {c: j for j, c in enumerate(model.classes_)}
            result = (vectorizer, model, np.asarray([column.get(e.intent or "", -1) for e in entries]), tuple(langs))
    _PRIORS.clear()
    _PRIORS[key] = result
    return result


class RetrievalInTheLoop:
    """Candidates from a folder's exchanges (Relevance), reranked with the folder's own model
    (module docstring).

    `generator` is the folder's generator (torch or ONNX, chatforge.runtime.decode); `choose`
    returns the best Choice for a prompt, or None when no candidate reaches min_similarity or can
    be moved into the dialogue."""

    def __init__(self, convs: Sequence[Conversation], generator: Any, settings: ServeHybrid) -> None:
        from chatforge.runtime.retrieval import RetrievalBot

        self.bot = RetrievalBot(convs)
        self.relevance = Relevance(self.bot, settings)
        self.generator = generator
        self.settings = settings

    @classmethod
    def open(cls, folder: Path, generator: Any, settings: ServeHybrid) -> RetrievalInTheLoop | None:
        """The folder's retrieval-in-the-loop, or None when it carries no exchanges or it is off."""
        convs = read_index(folder) if settings.enabled else None
        return cls(convs, generator, settings) if convs else None

    def ranked(self, prompt: list[dict[str, str]], *, lang: str) -> list[tuple[Any, float]]:
        """The `top_k` exchanges most relevant to the prompt, with their relevance, best first."""
        return self.relevance.top(prompt, k=self.settings.top_k, lang=lang)

    def agreement(self, text: str, prompt: list[dict[str, str]], *, lang: str,
                  ranked: list[tuple[Any, float]] | None = None) -> float:
        """Highest character 1-3-gram TF-IDF cosine (0-1) of `text` to the answers of the `top_k`
        exchanges most relevant to the prompt (`ranked`, when the caller has them); 0.0 when there
        are none."""
        ranked = self.ranked(prompt, lang=lang) if ranked is None else ranked
        if not ranked or not text.strip():
            return 0.0
        answers = self.relevance.answers
        past = answers.transform([e.answer for e, _ in ranked])
        return float((past @ answers.transform([text]).T).toarray().max())

    def choose(self, prompt: list[dict[str, str]], *, lang: str,
               ranked: list[tuple[Any, float]] | None = None) -> Choice | None:
        from chatforge.runtime.slots import codec_for

        ranked = self.ranked(prompt, lang=lang) if ranked is None else ranked
        codec = codec_for(self.generator.tokenizer)
        prompt_ids, values = self.generator.encode_prompt(prompt)
        eos = self.generator.tokenizer.eos_token_id
        weight = self.settings.rerank_weight
        best: Choice | None = None
        for entry, sim in ranked:
            if sim < self.settings.min_similarity:
                continue
            answer = entry.answer
            if unfilled_pii(answer, prompt):
                continue
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
                score = sim + weight * float(np.mean(self.generator.logprobs(ids)[len(prompt_ids) - 1:]))
            if best is None or score > best.score:
                text = codec.decode(answer, values or {}) if codec is not None else answer
                best = Choice(text, float(sim), score, entry.conversation_id)
        return best


def _placeholders(text: str) -> list[str]:
    from chatforge.runtime.slots import PLACEHOLDER

    return [m.group(0) for m in PLACEHOLDER.finditer(text)]


def served_answer(text: str, confidence: float, *, threshold: float, prompt: list[dict[str, str]], lang: str,
                  loop: RetrievalInTheLoop | None, fallback: str) -> tuple[str, Source]:
    """What a user is shown for one generated answer (module docstring): the answer itself at or
    above `threshold` when it agrees with the past answers (or the check is off), else the reranked
    retrieval candidate, else `fallback` (an unconfident answer) or the answer (a confident one). A
    nan confidence (not generated) counts as confident. An answer showing a PII mask tag the
    dialogue never held (`unfilled_pii`) counts as unconfident."""
    confident = not falls_back(confidence, threshold) and not unfilled_pii(text, prompt)
    if loop is None:
        return (text, "model") if confident else (fallback, "fallback")
    if confident and loop.settings.min_agreement <= 0:
        return text, "model"
    ranked = loop.ranked(prompt, lang=lang)  # once: the agreement check and the choice share it
    if confident and loop.agreement(text, prompt, lang=lang, ranked=ranked) >= loop.settings.min_agreement:
        return text, "model"
    choice = loop.choose(prompt, lang=lang, ranked=ranked)
    if choice is not None:
        return choice.text, "retrieval"
    return (text, "model") if confident else (fallback, "fallback")
