"""The one answer-quality path: every stage that reports answer quality (train, distill, prune,
quantize, evaluate) samples prompts, generates full answers and scores them here, so `bleu_zh` in
one report means what it means in every other.

A sample is one assistant turn of a held-out conversation: the messages before it are the prompt,
the turn is the reference. Answers are decoded greedily until EOS; the length limit comes from the
references (twice the longest reference in tokens, plus slack), never a fixed small number, so a
model that writes the full answer is never cut short. Scores per language: sacrebleu BLEU and chrF,
exact match, slot carry, degenerate rate and wrong-language rate (chatforge.metrics).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np

from chatforge import metrics
from chatforge.data.lang import detect_lang
from chatforge.io import progress
from chatforge.runtime.conversation import IGNORE, Conversation, tokenize_chat
from chatforge.runtime.fallback import falls_back

LANGS = ("zh", "en")
# what a retention gate compares between a model and its parent
RETENTION_KEYS = ("bleu_zh", "bleu_en", "slot_carry")
# what the train/distill/prune/quantize reports carry of a model's answers
ANSWER_KEYS = ("bleu", "bleu_zh", "bleu_en", "chrf", "exact_match", "slot_carry", "degenerate_rate")
# untimed requests before latency is measured (request_latency)
LATENCY_WARMUP_RUNS = 1

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Sample:
    conversation_id: str
    lang: str
    intent: str | None
    prompt: list[dict[str, str]]
    reference: str

    @property
    def context(self) -> str:
        """The dialogue so far as one text (where slot values the answer must repeat come from)."""
        return "\n".join(m["content"] for m in self.prompt)


@dataclass(frozen=True)
class Answer:
    """A model's answer: the one type evaluate scores (`generate_answers`) and serving returns
    (chatforge.runtime.backends.ModelBackend.answer, the cache, the upstream client)."""

    text: str
    finish_reason: Literal["stop", "length"]  # "stop" (EOS or stop string) | "length" (the limit cut it)
    confidence: float = float("nan")  # metrics.answer_confidence of the generated tokens; nan: not generated
    # token usage as serving reports it; 0 where it is not counted (evaluate's answers)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    intent: str | None = None  # a classifier's intent
    # per generated token: its text (they add up to `text`), log-probability and top alternatives;
    # empty for a classifier, whose answer is not generated
    token_texts: tuple[str, ...] = ()
    token_logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Answer:
        data = dict(data)
        data["token_texts"] = tuple(data.get("token_texts", ()))
        data["token_logprobs"] = tuple(data.get("token_logprobs", ()))
        data["top_logprobs"] = tuple(tuple((str(t), float(lp)) for t, lp in top) for top in data.get("top_logprobs", ()))
        return cls(**data)

    def tokens(self) -> list[tuple[str, float, list[tuple[str, float]]]] | None:
        """(text, logprob, top alternatives) per token; None when the answer has no tokens."""
        if not self.token_texts:
            return None
        tops = self.top_logprobs or tuple(() for _ in self.token_texts)
        return [(t, lp, list(top)) for t, lp, top in zip(self.token_texts, self.token_logprobs, tops, strict=True)]


def answer_samples(convs: Sequence[Conversation], *, max_per_lang: int | None, seed: int) -> tuple[list[Sample], dict[str, int]]:
    """Up to `max_per_lang` samples per language (None: all), conversations in a seeded shuffle,
    every assistant turn after the first message of a taken conversation. A reference with no text
    is skipped and counted (`references_empty_skipped`), and so is one showing a PII mask tag the
    dialogue never held (`references_pii_skipped`, chatforge.data.clean.unfilled_pii): served
    answers never show one, so no variant could match it (CrossWOZ test: 78 of 1,029 assistant
    turns; the demo: none). Same inputs and seed -> same samples, in the same order."""
    from chatforge.data.clean import unfilled_pii

    order = sorted(convs, key=lambda c: c.conversation_id)
    random.Random(seed).shuffle(order)
    cap = math.inf if max_per_lang is None else max_per_lang
    taken = dict.fromkeys(LANGS, 0)
    skipped_empty = skipped_pii = 0
    out: list[Sample] = []
    for conv in order:
        lang = conv.lang if conv.lang in LANGS else "en"
        for i, msg in enumerate(conv.messages):
            if msg["role"] != "assistant" or i == 0 or taken[lang] >= cap:
                continue
            if not (msg.get("content") or "").strip():
                skipped_empty += 1
                continue
            if unfilled_pii(msg["content"], conv.messages[:i]):
                skipped_pii += 1
                continue
            out.append(Sample(conv.conversation_id, lang, conv.intent, conv.messages[:i], msg["content"]))
            taken[lang] += 1
    return out, {"references_empty_skipped": skipped_empty, "references_pii_skipped": skipped_pii,
                 **{f"samples_{k}": v for k, v in taken.items()}}


def answer_length_limit(tokenizer: Any, samples: Sequence[Sample], *, cap: int) -> int:
    """max_new_tokens for a set of samples: 2 x the longest reference in this tokenizer's tokens
    + 16 (room for an answer a little longer than the reference, and its EOS), at most `cap`."""
    if not samples:
        return min(cap, 16)
    longest = max(len(tokenizer(s.reference, add_special_tokens=False)["input_ids"]) for s in samples)
    return max(1, min(cap, 2 * longest + 16))


@dataclass(frozen=True)
class Sampling:
    """How answers are decoded (serve.temperature, serve.top_p, serve.seed): greedy at temperature
    0, else temperature / top-p sampling seeded per conversation
    (chatforge.runtime.decode.conversation_seed), the rule `chatforge serve` applies to a request
    that sets no seed."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


GREEDY = Sampling()


def generate_answers(generator: Any, samples: Sequence[Sample], *, max_new_tokens: int, batch_size: int = 8,
                     desc: str = "generate", confidence_tokens: int | None = None,
                     sampling: Sampling = GREEDY) -> list[Answer]:
    """Answers through chatforge.runtime.decode (torch or ONNX), `batch_size` prompts per batch.
    Greedy (the default): the same tokens as one at a time. With a sampling temperature, each
    prompt samples with its own conversation seed, so an answer depends on its prompt only, as in
    `chatforge serve`. Each answer's confidence is taken over its first `confidence_tokens` tokens
    (None: all), as chatforge serve takes it."""
    from chatforge.runtime.decode import BatchRequest, GenerationConfig, conversation_seed

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p)
    chunks = [list(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    out: list[Answer] = []
    for chunk in progress(chunks, total=len(chunks), desc=desc, every=max(1, len(chunks) // 10)):
        if sampling.temperature == 0.0:
            gens = generator.generate_many([s.prompt for s in chunk], config, batch_size=batch_size)
        else:
            gens = generator.generate_batch([
                BatchRequest(list(s.prompt), replace(config, seed=conversation_seed(s.prompt, sampling.seed)))
                for s in chunk])
        out += [Answer(g.text.strip(), g.finish_reason, g.confidence_over(confidence_tokens)) for g in gens]
    return out


CALIBRATION_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def calibration(samples: Sequence[Sample], answers: Sequence[Answer], *, threshold: float,
                gazetteer: Mapping[str, Sequence[str]] | None = None,
                thresholds: Sequence[float] = CALIBRATION_THRESHOLDS) -> dict[str, float]:
    """What a confidence threshold does to the answers users get: the share that falls back (the
    fallback message instead of the answer) and the BLEU / slot carry of the answered part, at
    `threshold` (keys fallback_rate, answered_bleu_zh ...) and at each of `thresholds`
    (keys calibration_t070_fallback_rate ...). Answers without a confidence (nan) never fall back."""
    def at(t: float) -> dict[str, float]:
        kept = [i for i, a in enumerate(answers) if not falls_back(a.confidence, t)]  # chatforge.runtime.fallback
        scores = score_answers([samples[i] for i in kept], [answers[i] for i in kept], gazetteer=gazetteer) if kept else {}
        nan = float("nan")
        return {"fallback_rate": 1.0 - len(kept) / len(answers) if answers else nan,
                "answered_bleu_zh": scores.get("bleu_zh", nan), "answered_bleu_en": scores.get("bleu_en", nan),
                "answered_slot_carry": scores.get("slot_carry", nan)}

    out = dict(at(threshold))
    for t in thresholds:
        out |= {f"calibration_t{round(t * 100):03d}_{k}": v for k, v in at(t).items()}
    return out


def score_answers(samples: Sequence[Sample], answers: Sequence[Answer], *,
                  gazetteer: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Per language (`_zh`, `_en`) and overall: bleu, chrf, exact_match, slot_carry,
    degenerate_rate (plus degenerate_<reason> counts), wrong_lang; per language distinct_2 and
    top_answer_share (mode collapse, chatforge.metrics); answer_chars. Overall BLEU and
    chrF are the sample-weighted means of the per-language scores (zh and en need different
    tokenisers); rates are over all samples. `gazetteer` maps a language to entity surfaces
    counted as slots (cities, products ...). Empty languages score nan."""
    if len(samples) != len(answers):
        raise ValueError(f"got {len(answers)} answers for {len(samples)} samples")
    gazetteer = gazetteer or {}
    out: dict[str, float] = {}
    slots_all: list[tuple[int, int]] = []
    reasons_all: list[str | None] = []
    for lang in LANGS:
        idx = [i for i, s in enumerate(samples) if s.lang == lang]
        hyps = [answers[i].text for i in idx]
        refs = [samples[i].reference for i in idx]
        slots = [metrics.slot_carry_counts(samples[i].context, samples[i].reference, answers[i].text,
                                           gazetteer=gazetteer.get(lang, ())) for i in idx]
        reasons = [metrics.degenerate_reason(answers[i].text, finish_reason=answers[i].finish_reason) for i in idx]
        slots_all += slots
        reasons_all += reasons
        out[f"bleu_{lang}"] = metrics.bleu(hyps, refs, lang=lang)
        out[f"chrf_{lang}"] = metrics.chrf(hyps, refs)
        out[f"exact_match_{lang}"] = metrics.exact_match(hyps, refs)
        out[f"slot_carry_{lang}"] = metrics.slot_carry(slots)
        out[f"slots_expected_{lang}"] = float(sum(n for _, n in slots))
        out[f"degenerate_rate_{lang}"] = float(np.mean([r is not None for r in reasons])) if idx else float("nan")
        out[f"distinct_2_{lang}"] = metrics.distinct_n(hyps, lang=lang, n=2)
        out[f"top_answer_share_{lang}"] = metrics.top_answer_share(hyps)
        spoken = [h for h in hyps if h]
        out[f"wrong_lang_{lang}"] = float(np.mean([detect_lang(h) != lang for h in spoken])) if spoken else float("nan")
        out[f"samples_{lang}"] = float(len(idx))
    n = {lang: out[f"samples_{lang}"] for lang in LANGS}
    for key in ("bleu", "chrf"):
        scored = [(out[f"{key}_{lang}"], n[lang]) for lang in LANGS if n[lang]]
        out[key] = sum(v * w for v, w in scored) / sum(w for _, w in scored) if scored else float("nan")
    out["exact_match"] = metrics.exact_match([a.text for a in answers], [s.reference for s in samples])
    out["slot_carry"] = metrics.slot_carry(slots_all)
    out["degenerate_rate"] = float(np.mean([r is not None for r in reasons_all])) if reasons_all else float("nan")
    for reason in ("empty", "no_eos", "replacement_char", "loop"):
        out[f"degenerate_{reason}"] = float(sum(r == reason for r in reasons_all))
    out["answer_chars"] = float(np.mean([len(a.text) for a in answers])) if answers else float("nan")
    return out


def answer_quality(generator: Any, samples: Sequence[Sample], *, max_new_tokens_cap: int, batch_size: int = 8,
                   gazetteer: Mapping[str, Sequence[str]] | None = None, desc: str = "generate",
                   confidence_tokens: int | None = None,
                   sampling: Sampling = GREEDY) -> tuple[dict[str, float], list[Answer]]:
    """Generate full answers for `samples` (`generate_answers`) and score them: (scores, answers).
    `max_new_tokens` is in the scores, so a report says how long answers were allowed to be."""
    limit = answer_length_limit(generator.tokenizer, samples, cap=max_new_tokens_cap)
    answers = generate_answers(generator, samples, max_new_tokens=limit, batch_size=batch_size, desc=desc,
                               confidence_tokens=confidence_tokens, sampling=sampling)
    return {**score_answers(samples, answers, gazetteer=gazetteer), "max_new_tokens": float(limit)}, answers


def model_answer_scores(model: Any, tokenizer: Any, convs: Sequence[Conversation], *, samples_per_lang: int,
                        max_new_tokens: int, seed: int, batch_size: int = 16) -> dict[str, float]:
    """ANSWER_KEYS for an in-memory torch model: full greedy answers to `samples_per_lang` held-out
    assistant turns per language; slots include the gazetteer entities the model's slot
    placeholders know. `max_new_tokens` caps the reference-derived length limit. {} without samples."""
    from chatforge.runtime.decode import TorchGenerator
    from chatforge.runtime.slots import gazetteer_of

    samples, _ = answer_samples(convs, max_per_lang=samples_per_lang, seed=seed)
    if not samples:
        return {}
    was_training = model.training
    scores, _ = answer_quality(TorchGenerator(model, tokenizer, fingerprint="quality"), samples,
                               max_new_tokens_cap=max_new_tokens, batch_size=batch_size, gazetteer=gazetteer_of(tokenizer),
                               desc="answers")
    model.train(was_training)
    return {k: scores[k] for k in ANSWER_KEYS}


def assistant_perplexity(generator: Any, convs: Sequence[Conversation], *, max_seq_len: int) -> dict[str, float]:
    """Perplexity on assistant tokens only (the tokens the model is trained to write: each assistant
    message and its end token, chatforge.runtime.conversation.tokenize_chat), per language and overall;
    conversations cut at `max_seq_len` tokens. The one perplexity path of distill, prune and evaluate
    (train's val perplexity is exp of its val loss over the same tokens)."""
    nll = dict.fromkeys(LANGS, 0.0)
    count = dict.fromkeys(LANGS, 0)
    for conv in progress(convs, total=len(convs), desc="perplexity"):
        ex = tokenize_chat(generator.tokenizer, conv)
        ids, labels = ex.input_ids[:max_seq_len], ex.labels[:max_seq_len]
        mask = np.asarray([lab != IGNORE for lab in labels[1:]])
        if len(ids) < 2 or not mask.any():
            continue
        lang = conv.lang if conv.lang in LANGS else "en"
        nll[lang] -= float(generator.logprobs(ids)[mask].sum())
        count[lang] += int(mask.sum())
    out = {f"perplexity_{k}": metrics.perplexity(nll[k], count[k]) for k in LANGS}
    out["perplexity"] = metrics.perplexity(sum(nll.values()), sum(count.values()))
    return out


def request_latency(serve: Callable[[Request], Result], requests: Sequence[Request], *, runs: int | None = None,
                    warmup_runs: int = LATENCY_WARMUP_RUNS, tokens: Callable[[Result], int] | None = None,
                    desc: str | None = None) -> tuple[dict[str, float], list[Result]]:
    """The one latency definition: what `latency_p50_ms` / `latency_p95_ms` mean in distill.json,
    prune.json and evaluate.json.

    Latency is the wall-clock time (time.perf_counter) of one request served alone, `serve(request)`:
    a causal LM's greedy answer, a classifier's intent and canned answer, the retrieval baseline's
    answer. `warmup_runs` requests (LATENCY_WARMUP_RUNS = 1; the first ones, cycled) are served
    untimed first, so one-time costs (allocations, lazy initialisation, caches) are not latency.
    Then `runs` requests are timed (default: each of `requests` once, in order; cycled when more).
    Reported in milliseconds: `latency_p50_ms` and `latency_p95_ms`, numpy percentiles 50 and 95
    (linear interpolation) over the timed requests (chatforge.metrics.latency_stats); nan when nothing
    was timed. With `tokens` (the tokens a result generated), also `tokens_per_s`: generated tokens
    over the timed seconds. `desc` logs progress.

    Returns (the numbers above, the results of the timed requests in order). Raises ValueError
    when there are runs to time but no requests."""
    count = len(requests) if runs is None else runs
    if count and not requests:
        raise ValueError(f"request_latency: {count} runs asked for, but there are no requests to time")
    for i in range(warmup_runs if requests else 0):
        serve(requests[i % len(requests)])
    order = [requests[i % len(requests)] for i in range(count)]
    timed = order if desc is None else progress(order, total=count, desc=desc, every=max(1, count // 10))
    seconds: list[float] = []
    results: list[Result] = []
    for request in timed:  # progress logs between requests, outside the timed span
        t0 = time.perf_counter()
        results.append(serve(request))
        seconds.append(time.perf_counter() - t0)
    out = metrics.latency_stats(seconds)
    if tokens is not None:
        out["tokens_per_s"] = sum(tokens(r) for r in results) / sum(seconds) if sum(seconds) > 0 else float("nan")
    return out, results


def retention(child: Mapping[str, float], parent: Mapping[str, float], *, keys: Sequence[str] = RETENTION_KEYS) -> dict[str, float]:
    """child / parent for each answer-quality key (`retention_bleu_zh` ...) and their minimum
    (`retention_answers`): the share of its parent's answer quality a distilled, pruned or quantized
    model keeps (seed guide: at least 0.9). A key the parent scores 0 or nan is left out."""
    out: dict[str, float] = {}
    for key in keys:
        c, p = child.get(key, float("nan")), parent.get(key, float("nan"))
        if p and not (math.isnan(p) or math.isnan(c)):
            out[f"retention_{key}"] = float(c / p)
    out["retention_answers"] = min(out.values()) if out else float("nan")
    return out
