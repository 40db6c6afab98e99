"""Evaluate every built variant on the test split: quality, size, speed, and the build's gates.

Only original rows are evaluated (the split stage keeps augmented rows out of val/test already;
this is checked again here). Causal LMs are scored on every assistant turn they are asked for:
the conversation up to that turn is the prompt, the turn is the reference. Classifiers are scored
on conversation intents with the same input rule the serving backend uses; whether an answer is
shown or falls back is chatforge.runtime.fallback's rule, the one serve applies.

The stage script (stages/evaluate.py) reads its inputs with `read_inputs`, picks the variants with
`select_variants`, reads the previous served model with `read_previous` and runs `evaluate_all`:
the retrieval baseline, every variant, the gates (the forgetting gates compare the new served
model with the previous one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from chatforge import metrics
from chatforge.evaluation.paraphrase import IntentJudge, Question
from chatforge.io import progress
from chatforge.knobs import Reached
from chatforge.params import EvaluateGates, EvaluateParams, ServeHybrid
from chatforge.runtime.conversation import Conversation, conversations
from chatforge.runtime.folder import read_family
from chatforge.runtime.promoted import ServedScores
from chatforge.runtime.quality import (
    LANGS,
    RETENTION_KEYS,
    GREEDY,
    Answer,
    Sample,
    Sampling,
    answer_quality,
    assistant_perplexity,
    calibration,
    generate_answers,
    request_latency,
    retention,
    score_answers,
)
from chatforge.runtime.fallback import falls_back

log = logging.getLogger("chatforge.evaluate")

# the answer scores also measured on raw prompts (no slot placeholders), stored as raw_<key>
RAW_PROMPT_KEYS = ("bleu", "bleu_zh", "bleu_en", "chrf", "slot_carry", "degenerate_rate")

# the model's own answer scores kept beside the served ones, as model_<key> (retention compares them)
MODEL_KEYS = (*RETENTION_KEYS, "bleu", "chrf", "chrf_zh", "chrf_en", "degenerate_rate", "top_answer_share_zh",
              "top_answer_share_en")

# which weights file stands for a variant's size, by backend
INT8_FILE = "model.int8.onnx"
FLOAT_ONNX_FILE = "model.onnx"


class EvaluationError(ValueError):
    """Input the evaluate stage cannot work with; the message says how to fix it."""


def test_conversations(test: pl.DataFrame) -> tuple[list[Conversation], dict[str, int]]:
    """Original test conversations; counts what was left out and why."""
    if test.height == 0:
        raise EvaluationError(
            "the test split is empty: nothing to evaluate. Check split.test_fraction in params.yaml "
            "(it must be > 0) and that clean kept some conversations (reports/clean.json)."
        )
    original = test.filter(pl.col("method") == "original")
    counts = {"test_rows_not_original": test.height - original.height}
    return conversations(original), counts


def subset(samples: Sequence[Sample], per_lang: int | None) -> list[Sample]:
    """The first `per_lang` samples of each language, in sample order (None: all)."""
    if per_lang is None:
        return list(samples)
    seen = dict.fromkeys(LANGS, 0)
    out = []
    for s in samples:
        if seen[s.lang] < per_lang:
            out.append(s)
            seen[s.lang] += 1
    return out


# ------------------------------------------------------------------------------ causal language model
def generation_latency(generator: Any, prompts: Sequence[list[dict[str, str]]], *, new_tokens: int, runs: int) -> dict[str, float]:
    """Latency of a greedy answer of at most `new_tokens` tokens at batch size 1, over `runs` requests
    cycling through `prompts` (chatforge.runtime.quality.request_latency: one warm-up, ms, p50/p95),
    and decoded tokens per second."""
    from chatforge.runtime.decode import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    out, _ = request_latency(lambda prompt: generator.generate(prompt, config), prompts, runs=runs,
                             tokens=lambda gen: len(gen.token_ids))
    return out


# ------------------------------------------------------------------------------------------ classifier
def evaluate_classifier(backend: Any, convs: Sequence[Conversation], *, threshold: float) -> dict[str, Any]:
    from chatforge.runtime.decode import GenerationConfig

    labelled = [c for c in convs if c.intent]
    if not labelled:
        raise EvaluationError("no test conversation has an intent label: the classifier cannot be scored.")
    config = GenerationConfig()

    def classify(conv: Conversation) -> Any:
        first_user = next(m for m in conv.messages if m["role"] == "user")
        return backend.answer([first_user], config, lang=conv.lang or "en")

    latency, answers = request_latency(classify, labelled, desc="classify")  # each conversation once, timed
    y_true = [c.intent for c in labelled]
    y_pred = [a.intent for a in answers]
    conf = [a.confidence for a in answers]
    labels = sorted(set(backend.labels) | set(y_true))
    scores = metrics.classification_scores(y_true, y_pred, labels=labels)
    correct = [t == p for t, p in zip(y_true, y_pred, strict=True)]
    fell = [falls_back(c, threshold) for c in conf]  # the rule serve applies (runtime.fallback)
    out: dict[str, Any] = {
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        **{f"f1_{k}": v for k, v in scores.per_label_f1.items()},
        **metrics.fallback_stats(fell, correct),
        **latency,
    }
    langs = [c.lang if c.lang in LANGS else "en" for c in labelled]
    for lang in LANGS:  # a vocabulary that cannot read one language shows here, not in the overall number
        pick = [i for i, x in enumerate(langs) if x == lang]
        fb = metrics.fallback_stats([fell[i] for i in pick], [correct[i] for i in pick])
        out[f"conversations_{lang}"] = len(pick)
        out[f"accuracy_{lang}"] = float(np.mean([correct[i] for i in pick])) if pick else float("nan")
        out[f"fallback_rate_{lang}"] = fb["fallback_rate"]
    return {"metrics": out, "confusion": {"labels": scores.labels, "matrix": scores.confusion}}


# ------------------------------------------------------------------------------------------- variants
def weights_file(folder: Path, variant: str) -> Path:
    if variant == "int8":
        return folder / INT8_FILE
    for name in ("model.safetensors", FLOAT_ONNX_FILE):
        if (folder / name).exists():
            return folder / name
    return folder / "model.safetensors"


def parameter_count(path: Path) -> int:
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        return int(sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys()))  # noqa: SIM118 (safe_open is not a dict)


def check_variants(folders: dict[str, Path], wanted: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """The variants asked for that exist; the rest are reported as missing, not fatal."""
    present, missing = {}, []
    for name in wanted:
        folder = folders.get(name)
        if folder is None or not folder.is_dir() or not weights_file(folder, name).exists():
            missing.append(name)
            log.warning("variant %s: %s missing; evaluating the others", name, folder)
        else:
            present[name] = folder
    return present, missing


def unevaluable(folders: Mapping[str, Path]) -> dict[str, str]:
    """{variant: reason} for the variants that exist but cannot be evaluated for their family: a
    classifier folder without a classification head or without responses.json (the untouched `base`
    encoder has neither). They are skipped and reported, like a missing variant."""
    import json

    out: dict[str, str] = {}
    for name, folder in folders.items():
        if read_family(folder) != "classifier":
            continue
        config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if (folder / "config.json").exists() else {}
        head = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
        lacks = [what for what, ok in (("classification head", head),
                                        ("responses.json", (folder / "responses.json").exists())) if not ok]
        if lacks:
            out[name] = (f"{folder} has no {' and no '.join(lacks)}: an untrained encoder cannot classify intents or "
                         f"answer; only trained classifier variants are evaluated. Remove {name!r} from "
                         "evaluate.variants to leave it out without this note.")
    return out


def sample_knobs(convs: Sequence[Conversation], params: EvaluateParams, sample_counts: Mapping[str, int]) -> list[Reached]:
    """Test assistant turns per language taken against evaluate.max_samples_per_lang (and
    other_samples_per_lang): fewer when the test split has fewer."""
    from chatforge.runtime.quality import answer_samples

    _, available = answer_samples(convs, max_per_lang=None, seed=params.seed)
    knobs = []
    for key, asked in (("evaluate.max_samples_per_lang", params.max_samples_per_lang),
                       ("evaluate.other_samples_per_lang", params.other_samples_per_lang)):
        if asked is None:
            continue
        for lang in LANGS:
            have = available[f"samples_{lang}"]
            got = min(asked, have) if key.startswith("evaluate.other") else sample_counts[f"samples_{lang}"]
            knobs.append(Reached(f"{key} ({lang})", asked, got, "as requested" if got == asked else
                                 f"the test split has {have} {lang} assistant turns (original rows, non-empty)"))
    return knobs


@dataclass(frozen=True)
class Serving:
    """How `chatforge serve` turns a generated answer into what the user reads (serve.*): the
    confidence threshold over the first `confidence_tokens` tokens, retrieval in the loop
    (`hybrid`), and the fallback message per language; `sampling` is how its answers are decoded
    (serve.temperature, serve.top_p, serve.seed: seeded per conversation)."""

    threshold: float
    confidence_tokens: int | None
    hybrid: ServeHybrid
    fallback: Mapping[str, str]
    sampling: Sampling = GREEDY


def serve_answers(generator: Any, folder: Path, prompts: Sequence[list[dict[str, str]]], langs: Sequence[str],
                  answers: Sequence[Answer], serving: Serving, *, desc: str = "served") -> tuple[list[Answer], list[str]]:
    """The answers as served (chatforge.runtime.hybrid.served_answer) and where each came from
    (model | retrieval | fallback)."""
    from chatforge.runtime.hybrid import RetrievalInTheLoop, served_answer

    loop = RetrievalInTheLoop.open(folder, generator, serving.hybrid)
    out, sources = [], []
    for prompt, lang, a in progress(list(zip(prompts, langs, answers, strict=True)), total=len(answers), desc=desc,
                                    every=max(1, len(answers) // 10)):
        text, source = served_answer(a.text, a.confidence, threshold=serving.threshold, prompt=prompt, lang=lang,
                                     loop=loop, fallback=serving.fallback[lang])
        out.append(a if source == "model" else Answer(text, "stop", a.confidence))
        sources.append(source)
    return out, sources


def source_shares(sources: Sequence[str]) -> dict[str, float]:
    """answered_by_model / answered_by_retrieval / fallback_rate: shares of the served answers."""
    n = len(sources) or 1
    return {"answered_by_model": sources.count("model") / n, "answered_by_retrieval": sources.count("retrieval") / n,
            "fallback_rate": sources.count("fallback") / n}


def paraphrase_scores(answers: Sequence[str], questions: Sequence[Question], judge: IntentJudge) -> dict[str, float]:
    """On-intent rates (evaluation.paraphrase) and mode-collapse numbers of the paraphrase answers."""
    out = judge.on_intent_rates(answers, questions)
    for lang in LANGS:
        mine = [a for a, q in zip(answers, questions, strict=True) if q.lang == lang]
        out[f"paraphrase_top_answer_share_{lang}"] = metrics.top_answer_share(mine)
    return out


def evaluate_variant(
    name: str,
    folder: Path,
    convs: Sequence[Conversation],
    samples: Sequence[Sample],
    params: EvaluateParams,
    *,
    serving: Serving,
    gazetteer: Mapping[str, Sequence[str]] | None = None,
    max_seq_len: int = 1024,
    providers: Sequence[str] | None = None,
    questions: Sequence[Question] = (),
    judge: IntentJudge | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics for one variant, plus extras (answers for the report, confusion matrix).

    A causal LM's answers are scored as `chatforge serve` shows them (`serve_answers`: confidence
    threshold, retrieval in the loop, fallback): the plain keys (bleu_zh, slot_carry, ...) are the
    served answers; `model_*` are the model's own generations (what the chain's retention gates
    compare); calibration_t* rows show what each threshold would do to the model alone. With
    `questions` and a `judge`, the paraphrase set is answered the same way (paraphrase_on_intent_*).
    A trained torch variant (not `base`) with slot placeholders is scored again on raw prompts
    (raw_prompt_scores: raw_bleu_zh, raw_slot_carry ...). ONNX variants run on the execution
    `providers` (quantize.providers; None: CPU), torch ones on the accelerator if any."""
    weights = weights_file(folder, name)
    common = {"params": parameter_count(weights), "size_mb": weights.stat().st_size / 1e6}
    family = read_family(folder)
    backend_name = "onnx_int8" if name == "int8" else "torch"
    if family == "classifier":
        from chatforge.runtime.backends import ClassifierBackend

        result = evaluate_classifier(
            ClassifierBackend(folder, backend=backend_name, providers=providers), convs, threshold=serving.threshold
        )
        return {**common, **result["metrics"]}, {"confusion": result["confusion"]}
    from chatforge.runtime.decode import load_generator

    generator = load_generator(folder, backend=backend_name, providers=providers)
    ppl_convs = list(convs)[: params.max_ppl_conversations]
    scores, generated = answer_quality(generator, samples, max_new_tokens_cap=params.max_new_tokens,
                                       batch_size=params.batch_size, gazetteer=gazetteer, desc=f"{name} answers",
                                       confidence_tokens=serving.confidence_tokens, sampling=serving.sampling)
    answers, sources = serve_answers(generator, folder, [s.prompt for s in samples], [s.lang for s in samples],
                                     generated, serving, desc=f"{name} served")
    below = calibration(samples, generated, threshold=serving.threshold, gazetteer=gazetteer)
    out = {
        **common,
        **score_answers(samples, answers, gazetteer=gazetteer),
        "max_new_tokens": scores["max_new_tokens"],
        **{f"model_{k}": scores[k] for k in MODEL_KEYS},
        **below,
        "low_confidence_rate": below["fallback_rate"],
        **source_shares(sources),
        **assistant_perplexity(generator, ppl_convs, max_seq_len=max_seq_len),
        **generation_latency(
            generator, [s.prompt for s in samples[:8]], new_tokens=params.latency_new_tokens, runs=params.latency_runs
        ),
    }
    extra: dict[str, Any] = {"answers": [a.text for a in answers], "finish": [a.finish_reason for a in answers],
                             "sources": sources}
    if questions and judge is not None:
        asked = [Sample(q.id, q.lang, q.intent, q.prompt, "") for q in questions]
        p_generated = generate_answers(generator, asked, max_new_tokens=int(scores["max_new_tokens"]),
                                       batch_size=params.batch_size, desc=f"{name} paraphrases",
                                       confidence_tokens=serving.confidence_tokens, sampling=serving.sampling)
        p_answers, p_sources = serve_answers(generator, folder, [q.prompt for q in questions],
                                             [q.lang for q in questions], p_generated, serving, desc=f"{name} paraphrases served")
        out |= paraphrase_scores([a.text for a in p_answers], questions, judge)
        # the model's own paraphrase answers, before the threshold and retrieval in the loop
        out |= {f"model_{k}": v for k, v in judge.on_intent_rates([a.text for a in p_generated], questions).items()}
        out["paraphrase_answered_by_retrieval"] = source_shares(p_sources)["answered_by_retrieval"]
        extra["paraphrases"] = [{"id": q.id, "answer": a.text, "source": src,
                                 "on_intent": judge.on_intent(a.text, q.intent, lang=q.lang)}
                                for q, a, src in zip(questions, p_answers, p_sources, strict=True)]
    if backend_name == "torch" and samples and name != "base":  # base: the untrained start, never exported
        out |= raw_prompt_scores(folder, samples, params, gazetteer=gazetteer, providers=providers)
    return out, extra


def raw_prompt_scores(folder: Path, samples: Sequence[Sample], params: EvaluateParams, *,
                      gazetteer: Mapping[str, Sequence[str]] | None = None,
                      providers: Sequence[str] | None = None) -> dict[str, float]:
    """The answer scores of a model trained with slot placeholders when its prompts arrive as
    written, without placeholders: how it answers from its GGUF export in llama.cpp or Ollama,
    which run the chat template and nothing else. {"raw_bleu_zh": ..., ...} over RAW_PROMPT_KEYS;
    {} for a model without slot placeholders (there the scores above are already these)."""
    from chatforge.runtime.decode import load_generator
    from chatforge.runtime.slots import CONFIG_KEY

    generator = load_generator(folder, backend="torch", providers=providers)
    if generator.tokenizer.init_kwargs.pop(CONFIG_KEY, None) is None:  # popped before any prompt is encoded
        return {}
    scores, _ = answer_quality(generator, samples, max_new_tokens_cap=params.max_new_tokens,
                               batch_size=params.batch_size, gazetteer=gazetteer, desc=f"{folder.name} raw prompts")
    return {f"raw_{k}": scores[k] for k in RAW_PROMPT_KEYS if k in scores}


def evaluate_retrieval(train: pl.DataFrame, samples: Sequence[Sample], *,
                       gazetteer: Mapping[str, Sequence[str]] | None = None, questions: Sequence[Question] = (),
                       judge: IntentJudge | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The retrieval FAQ bot (chatforge.runtime.retrieval) fit on the train split's original
    conversations and scored on the same samples with the same metrics; latency per answer; the
    paraphrase set's on-intent rates when `questions` and a `judge` are given."""
    from chatforge.runtime.retrieval import RetrievalBot

    bot = RetrievalBot(conversations(train.filter(pl.col("method") == "original")))
    latency, answers = request_latency(lambda s: Answer(bot.answer(s.prompt, lang=s.lang), "stop"), samples,
                                       desc="retrieval answers")
    out = {"params": 0, "size_mb": bot.size_bytes() / 1e6, "entries": len(bot.entries),
           **score_answers(samples, answers, gazetteer=gazetteer), **latency}
    extra: dict[str, Any] = {"answers": [a.text for a in answers], "finish": [a.finish_reason for a in answers]}
    if questions and judge is not None:
        p_answers = [bot.answer(q.prompt, lang=q.lang) for q in questions]
        out |= paraphrase_scores(p_answers, questions, judge)
        extra["paraphrases"] = [{"id": q.id, "answer": a, "source": "retrieval",
                                 "on_intent": judge.on_intent(a, q.intent, lang=q.lang)}
                                for q, a in zip(questions, p_answers, strict=True)]
    return out, extra


def reference_scores(samples: Sequence[Sample]) -> dict[str, float]:
    """The test references' own diversity: reference_top_answer_share_zh/_en and
    reference_distinct_2_zh/_en (a FAQ repeats answers by nature; the collapse limit scales with it)."""
    out: dict[str, float] = {}
    for lang in LANGS:
        refs = [s.reference for s in samples if s.lang == lang]
        out[f"reference_top_answer_share_{lang}"] = metrics.top_answer_share(refs)
        out[f"reference_distinct_2_{lang}"] = metrics.distinct_n(refs, lang=lang)
    return out


def align_answers(extra: dict[str, Any], asked: Sequence[Sample], shown: Sequence[Sample]) -> dict[str, Any]:
    """Details for the report: answers/finish reasons for the `shown` samples (None where this
    variant was scored on a subset without them)."""
    if "answers" not in extra:
        return extra
    where = {id(s): i for i, s in enumerate(asked)}
    pick = [where.get(id(s)) for s in shown]
    return {**extra, **{key: [None if i is None else extra[key][i] for i in pick]
                        for key in ("answers", "finish", "sources") if key in extra}}


def served_variant(serve_model: str | None, folders: Mapping[str, Path]) -> str | None:
    """The evaluated variant `chatforge serve` answers with by default (serve.variants[0].model):
    the variant whose folder it names; int8 wins for an ONNX folder, as serve's backend auto does.
    None for an upstream server (no folder) or a folder the build did not make."""
    if serve_model is None:
        return None
    target = Path(serve_model).resolve()
    names = [n for n, f in folders.items() if Path(f).resolve() == target]
    return "int8" if "int8" in names else (names[0] if names else None)


def variants_csv(results: dict[str, dict[str, Any]]) -> str:
    """Plot data for `dvc plots`: one row per variant; quality = BLEU (causal LM) or accuracy."""
    lines = ["variant,quality,size_mb,latency_p50_ms"]
    for name, r in results.items():
        quality = r.get("bleu", r.get("accuracy", float("nan")))
        lines.append(f"{name},{quality:.4f},{r.get('size_mb', float('nan')):.3f},{r.get('latency_p50_ms', float('nan')):.2f}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- gates
def gate(value: float | None, *, ok: bool | None, limit: str, warn_only: bool = False,
         applies: bool = True) -> dict[str, Any]:
    """One gate's record: {value, limit, status}; status pass | fail | warn (a `warn_only` gate that
    is missed) | missing (nothing to measure: never fails) | not_applicable (`applies` false: the
    gate has no meaning for this build, e.g. forgetting on a fresh build; never fails, the limit
    says why)."""
    if not applies:
        return {"value": None, "limit": limit, "status": "not_applicable"}
    status = "missing" if value is None or ok is None else ("pass" if ok else ("warn" if warn_only else "fail"))
    return {"value": value, "limit": limit, "status": status}


# what to look at when a gate fails, by gate name prefix
GATE_HINTS = {
    "served_bleu": "train longer or with a higher lr (train.max_steps, train.lr), a larger model (model.scratch.*), "
                   "or a gentler chain (distill.student_layers, prune.ratio); evaluate.gates.min_bleu_vs_retrieval lowers the bar",
    "served_slot_carry": "keep model.slots.enabled, add the missing entities to lexicons/gazetteers/, train longer; "
                         "evaluate.gates.min_slot_carry lowers the bar",
    "served_degenerate_rate": "train longer (train.max_steps); evaluate.max_new_tokens caps answer length; "
                              "evaluate.gates.max_degenerate_rate lowers the bar",
    "served_wrong_lang": "check the language mix of the train data (reports/ingest.json); evaluate.gates.max_wrong_lang",
    "served_paraphrase_on_intent": "the paraphrase answers in reports/evaluate_details.json show what went wrong: "
                                   "a pretrained base (model.base), retrieval in the loop (serve.hybrid, "
                                   "serve.confidence_threshold); evaluate.gates.min_paraphrase_margin lowers the bar",
    "served_collapse": "the model says one sentence to many questions: a pretrained base (model.base), more data, "
                       "serve.hybrid; evaluate.gates.collapse_floor / collapse_factor raise the limit",
    "served_fallback_rate": "the calibration_t* rows of the served variant in reports/evaluate.json show the fallback rate "
                            "per threshold: lower serve.confidence_threshold, or train longer; evaluate.gates.max_fallback_rate",
    "distill_retention": "distill.steps, distill.student_layers, distill.lr; evaluate.gates.min_retention",
    "prune_retention": "prune.ratio, prune.recovery_steps; evaluate.gates.min_retention",
    "int8_retention": "quantize.block_size, quantize.accuracy_level, quantize.keep_float; evaluate.gates.min_retention",
    "int8_size_reduction": "quantize.scheme, quantize.keep_float",
    "int8_accuracy_drop": "quantize.* ; evaluate.gates.max_int8_accuracy_drop",
    "forgetting": "the round lost what the previous served model knew: replay more of the old training data, fewer "
                  "steps or a lower lr for the round (train.*), or rebuild from the base (train.init_from: base); "
                  "evaluate.gates.max_bleu_drop / max_slot_carry_drop raise the limit",
}


def compute_gates(variants: dict[str, dict[str, Any]], reports: dict[str, dict[str, Any]], params: EvaluateParams,
                  *, served: str | None = None, references: Mapping[str, float] | None = None,
                  previous: Previous | None = None) -> dict[str, dict[str, Any]]:
    """Every gate with its value, limit and status (pass | fail | warn | missing | not_applicable:
    `gate`). Answer gates compare the served variant with the retrieval baseline (BLEU on the test
    split, on-intent rate on the paraphrase set) and bound its degenerate and top-answer shares (the
    collapse limit scales with the `references`' own top-answer share, reference_scores); with
    `previous` (`read_previous`), the forgetting gates compare it with the previous served model
    (`forgetting_gates`); retention gates compare each step of the chain (teacher -> [aligned ->]
    student -> pruned -> int8) with its parent on the models' own answers (model_* keys)."""
    g = params.gates
    references = references or {}
    out: dict[str, dict[str, Any]] = {}
    srv, base = variants.get(served or "", {}), variants.get("retrieval", {})
    if "bleu_zh" in srv or served is None:
        for lang in LANGS:
            value, bar = srv.get(f"bleu_{lang}"), base.get(f"bleu_{lang}")
            ok = None if _missing(value) or _missing(bar) else value >= g.min_bleu_vs_retrieval * bar
            limit = f">= {g.min_bleu_vs_retrieval} x retrieval ({'?' if _missing(bar) else f'{bar:.2f}'})"
            out[f"served_bleu_{lang}"] = gate(value, ok=ok, limit=limit)
        carry = srv.get("slot_carry")
        out["served_slot_carry"] = gate(carry, ok=None if _missing(carry) else carry >= g.min_slot_carry,
                                        limit=f">= {g.min_slot_carry}")
        degen = srv.get("degenerate_rate")
        out["served_degenerate_rate"] = gate(degen, ok=None if _missing(degen) else degen <= g.max_degenerate_rate,
                                             limit=f"<= {g.max_degenerate_rate}")
        for lang in LANGS:
            wrong = srv.get(f"wrong_lang_{lang}")
            out[f"served_wrong_lang_{lang}"] = gate(wrong, ok=None if _missing(wrong) else wrong <= g.max_wrong_lang,
                                                    limit=f"<= {g.max_wrong_lang}")
        for lang in LANGS:
            value, bar = srv.get(f"paraphrase_on_intent_{lang}"), base.get(f"paraphrase_on_intent_{lang}")
            ok = None if _missing(value) or _missing(bar) else value >= bar + g.min_paraphrase_margin - 1e-9
            limit = f">= retrieval ({'?' if _missing(bar) else f'{bar:.3f}'}) + {g.min_paraphrase_margin}"
            out[f"served_paraphrase_on_intent_{lang}"] = gate(value, ok=ok, limit=limit)
        for lang in LANGS:
            share = srv.get(f"top_answer_share_{lang}")
            ref = references.get(f"reference_top_answer_share_{lang}", float("nan"))
            cap = metrics.collapse_limit(ref, floor=g.collapse_floor, factor=g.collapse_factor)
            out[f"served_collapse_{lang}"] = gate(share, ok=None if _missing(share) else share <= cap,
                                                  limit=f"<= {cap:.4f} = max({g.collapse_floor}, {g.collapse_factor} x "
                                                        f"references' {'?' if _missing(ref) else f'{ref:.4f}'})")
        fallback = srv.get("fallback_rate")
        out["served_fallback_rate"] = gate(fallback, ok=None if _missing(fallback) else fallback <= g.max_fallback_rate,
                                           limit=f"<= {g.max_fallback_rate}")
    if previous is not None:
        out |= forgetting_gates(srv, previous, g)
    # val loss - train loss at the end of training (signed: val below train is no overfitting);
    # a proxy, so a warning: the answer gates decide
    gap = _first_number(reports.get("train", {}), ("val_gap", "train_val_gap"))
    out["train_val_gap"] = gate(gap, ok=None if gap is None else gap <= g.max_gap, limit=f"<= {g.max_gap}", warn_only=True)
    teacher = variants.get("teacher", {})
    ppl = teacher.get("perplexity")
    lo, hi = g.perplexity_band
    ok_ppl = None if ppl is None or _nan(ppl) else lo <= ppl <= hi
    out["teacher_perplexity_band"] = gate(ppl, ok=ok_ppl, limit=f"[{lo}, {hi}]", warn_only=True)
    q = reports.get("quantize", {})
    # the student is distilled from models/aligned (the teacher after kto): its parent when evaluated
    distilled_from = "aligned" if "aligned" in variants else "teacher"
    chain = (("distill_retention", distilled_from, "student"), ("prune_retention", _prune_source(reports), "pruned"),
             ("int8_retention", _quantize_source(q), "int8"))
    for name, parent, child in chain:
        p, c = variants.get(parent, {}), variants.get(child, {})
        if "macro_f1" in p and "macro_f1" in c:
            value = metrics.retention(c["macro_f1"], p["macro_f1"])
        elif p and c:
            value = retention(_own(c), _own(p))["retention_answers"]
        else:
            value = None
        value = None if value is None or _nan(value) else value
        out[name] = gate(value, ok=None if value is None else value >= g.min_retention,
                         limit=f">= {g.min_retention} of {parent} (min over BLEU zh, BLEU en, slot carry)")
    red = _size_reduction(q)
    out["int8_size_reduction"] = gate(
        red, ok=None if red is None else red >= g.min_int8_size_reduction, limit=f">= {g.min_int8_size_reduction}"
    )
    int8, parent = variants.get("int8", {}), variants.get(_quantize_source(q), {})
    if "accuracy" in int8 and "accuracy" in parent:
        drop = parent["accuracy"] - int8["accuracy"]
        out["int8_accuracy_drop"] = gate(drop, ok=drop <= g.max_int8_accuracy_drop, limit=f"<= {g.max_int8_accuracy_drop}")
    return out


# ------------------------------------------------------------------------------ forgetting (issue 23)
FRESH_BUILD = "fresh build: nothing served before"
# (served key, label in messages, the EvaluateGates field bounding its drop, digits shown)
FORGETTING_KEYS = (("bleu_zh", "BLEU zh", "max_bleu_drop", 2), ("bleu_en", "BLEU en", "max_bleu_drop", 2),
                   ("slot_carry", "slot carry", "max_slot_carry_drop", 4))


@dataclass(frozen=True)
class Previous:
    """The model the new served one must not fall behind (evaluate --previous): the served scores
    of a promoted folder (chatforge.runtime.promoted), or `scores` None and the `reason` the
    forgetting gates do not apply (a fresh build)."""

    folder: str
    scores: ServedScores | None
    reason: str = ""
    samples_sha256: str | None = None  # the test samples the previous scores were measured on, when recorded


def read_previous(folder: Path) -> Previous:
    """The previous served model named by evaluate --previous (dvc.yaml: models/${train.init_from}).

    A promoted folder (it has promoted.json; `chatforge promote` wrote it) gives the served BLEU zh /
    en and slot carry of its evaluate.json (runtime.promoted.previous_scores); any other model folder
    (models/base: a fresh build) gives no scores and the reason FRESH_BUILD. Raises EvaluationError
    when `folder` does not exist, and PromotedError (a ModelFolderError) for a promoted folder that is
    incomplete or whose evaluate.json lacks the served numbers; each message says how to fix it."""
    import json

    from chatforge.runtime.folder import SHOWN_CHARS
    from chatforge.runtime.promoted import is_promoted, open_promoted, previous_scores

    shown = str(folder) if len(str(folder)) <= SHOWN_CHARS else f"{str(folder)[:SHOWN_CHARS]}..."
    if not folder.exists():
        raise EvaluationError(
            f"--previous {shown} does not exist: pass the promoted folder `chatforge promote` wrote (models/served, with "
            "train.init_from: served) or models/base (a fresh build); fix the evaluate command in dvc.yaml."
        )
    if not is_promoted(folder):
        return Previous(str(folder), None, f"{FRESH_BUILD}; {shown} is not a promoted folder")
    report = open_promoted(folder).report
    summary = json.loads(report.read_text(encoding="utf-8")).get("summary")
    digest = summary.get("samples_sha256") if isinstance(summary, dict) else None
    return Previous(str(folder), previous_scores(report), samples_sha256=digest if isinstance(digest, str) else None)


def forgetting_gates(served: Mapping[str, Any], previous: Previous, g: EvaluateGates) -> dict[str, dict[str, Any]]:
    """forgetting_bleu_zh, forgetting_bleu_en, forgetting_slot_carry: the drop of the new served
    variant's score (`served`: its metrics) below the previous served model's (previous - new; BLEU
    in points, slot carry as a share), which must stay <= evaluate.gates.max_bleu_drop /
    max_slot_carry_drop (1e-9 slack for float rounding). not_applicable with the reason when
    `previous` has no scores (a fresh build); missing when the new served variant has no such score."""
    out: dict[str, dict[str, Any]] = {}
    for key, label, bound, digits in FORGETTING_KEYS:
        limit = getattr(g, bound)
        if previous.scores is None:
            out[f"forgetting_{key}"] = gate(None, ok=None, limit=f"<= {limit} drop ({previous.reason})", applies=False)
            continue
        before, now = getattr(previous.scores, key), served.get(key)
        drop = None if _missing(now) else before - now
        shown = "?" if drop is None else f"{now:.{digits}f}"
        out[f"forgetting_{key}"] = gate(drop, ok=None if drop is None else drop <= limit + 1e-9,
                                        limit=f"<= {limit} drop below the previous served model ({label} "
                                              f"{before:.{digits}f} -> {shown}; {previous.folder})")
    return out


def previous_block(served: Mapping[str, Any], previous: Previous, *, samples_sha256: str) -> dict[str, Any]:
    """reports/evaluate.json's `previous`: the folder, whether the forgetting gates applied (else the
    reason), the previous served scores, delta_<key> = new - previous (negative: a drop), and
    whether both were measured on the same test samples (None when the previous report predates the
    samples hash)."""
    if previous.scores is None:
        return {"folder": previous.folder, "applicable": False, "reason": previous.reason}
    out: dict[str, Any] = {"folder": previous.folder, "applicable": True, "served_variant": previous.scores.variant,
                           "same_test_samples": None if previous.samples_sha256 is None
                           else previous.samples_sha256 == samples_sha256}
    for key, _, _, _ in FORGETTING_KEYS:
        before, now = getattr(previous.scores, key), served.get(key)
        out[key] = before
        out[f"delta_{key}"] = None if _missing(now) else now - before
    return out


def samples_sha256(samples: Sequence[Sample]) -> str:
    """A hash of the test samples (conversation id, language, reference, in order): two reports with
    the same hash scored the same test turns, so their numbers compare."""
    import hashlib
    import json

    payload = json.dumps([[s.conversation_id, s.lang, s.reference] for s in samples], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def gate_failures(gates: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per failed gate: name, value, limit, and the params to look at."""
    lines = []
    for name, g in gates.items():
        if g["status"] != "fail":
            continue
        hint = next((h for prefix, h in GATE_HINTS.items() if name.startswith(prefix)), "")
        value = g["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"gate {name} failed: {shown}, needs {g['limit']}" + (f". Look at: {hint}" if hint else ""))
    return lines


def _own(variant: Mapping[str, Any]) -> dict[str, Any]:
    """A variant's scores on its model's own answers (model_<key>, else <key>): what retention compares."""
    return {k: variant.get(f"model_{k}", variant.get(k)) for k in RETENTION_KEYS}


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _size_reduction(quantize_report: dict[str, Any]) -> float | None:
    ratio = _first_number(quantize_report, ("size_ratio", "int8_size_ratio"))
    return None if ratio is None else 1.0 - ratio


def _prune_source(reports: dict[str, dict[str, Any]]) -> str:
    source = reports.get("prune", {}).get("source")
    return source if isinstance(source, str) else "student"


def _quantize_source(quantize_report: dict[str, Any]) -> str:
    source = quantize_report.get("source")
    return source if isinstance(source, str) else "pruned"


def _first_number(d: dict[str, Any], keys: Sequence[str]) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


# ------------------------------------------------------------------------------------ the whole stage
def named_paths(items: Sequence[str]) -> dict[str, Path]:
    """NAME=PATH options (`--variant teacher=models/teacher`) as {name: path}. Raises EvaluationError
    for an item without '=' (the stage's dvc.yaml command passes them)."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise EvaluationError(f"expected NAME=PATH, got {bad}; fix the evaluate command in dvc.yaml")
    return {k: Path(v) for k, v in (item.split("=", 1) for item in items)}


def read_reports(paths: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Earlier stages' metrics JSON by stage name ({} for a file not written: that stage did not run)."""
    import json

    return {k: json.loads(v.read_text(encoding="utf-8")) if v.exists() else {} for k, v in paths.items()}


@dataclass
class EvaluateInputs:
    """What every variant is evaluated on (`read_inputs`)."""

    convs: list[Conversation]  # test conversations (original rows)
    counts: dict[str, int]  # test conversations/turns per language (summary keys)
    samples: list[Sample]  # the served variant's prompts: up to evaluate.max_samples_per_lang per language
    sample_counts: dict[str, int]
    train: pl.DataFrame  # the train split: what the retrieval baseline looks up
    gazetteer: dict[str, list[str]]  # lang -> entity surfaces counted as slots
    questions: list[Question]  # the paraphrase set ([] without one)
    judge: IntentJudge | None  # the on-intent rule fitted on the train split (None without paraphrases)


def read_inputs(test_path: Path, train_path: Path, gazetteers: Path, paraphrases: Path | None, *,
                params: EvaluateParams, slot_kinds: Sequence[str], fallbacks: Iterable[str]) -> EvaluateInputs:
    """Read and check the stage's inputs: the test and train splits, the gazetteer entities of
    `slot_kinds` (model.slots.kinds; numbers need none), the paraphrase set and the judge that tells
    an on-intent answer (`fallbacks`: serve.fallback's messages, never on any intent). Raises
    EvaluationError (an empty test split ...), GazetteerError, ParaphraseError or ValueError, each
    naming the file or key to fix."""
    from chatforge.data.entities import read_gazetteers
    from chatforge.evaluation.paraphrase import paraphrase_subset, read_paraphrases
    from chatforge.runtime.quality import answer_samples

    kinds = [k for k in slot_kinds if k != "number"]
    gazetteer = {lang: [e for entries in by_kind.values() for e in entries]
                 for lang, by_kind in read_gazetteers(gazetteers, langs=("zh", "en"), kinds=kinds).items()}
    convs, counts = test_conversations(pl.read_parquet(test_path))
    samples, sample_counts = answer_samples(convs, max_per_lang=params.max_samples_per_lang, seed=params.seed)
    train = pl.read_parquet(train_path)
    every = read_paraphrases(paraphrases) if paraphrases else []
    questions = paraphrase_subset(every, params.max_paraphrases_per_lang)
    if len(questions) < len(every):
        log.info("paraphrases: %d of %d questions (evaluate.max_paraphrases_per_lang %d, intents in turn)",
                 len(questions), len(every), params.max_paraphrases_per_lang)
    judge = IntentJudge(conversations(train.filter(pl.col("method") == "original")),
                        fallbacks=fallbacks) if questions else None
    return EvaluateInputs(convs, counts, samples, sample_counts, train, gazetteer, questions, judge)


def select_variants(folders: dict[str, Path], wanted: Sequence[str]) -> tuple[dict[str, Path], list[str], dict[str, str]]:
    """(the variants to evaluate, the missing ones, {skipped: reason}): `check_variants`, then
    `unevaluable`, each skipped one logged. Raises ModelFolderError / EvaluationError for a folder
    that is not a built model folder."""
    present, missing = check_variants(folders, wanted)
    skipped = unevaluable(present)
    for name, reason in skipped.items():
        log.warning("variant %s skipped: %s", name, reason)
    return {k: v for k, v in present.items() if k not in skipped}, missing, skipped


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # reports/evaluate.json: one block per variant + skipped, gates, summary, knobs, models
    details: dict[str, Any]  # answers to the first 20 samples per variant, confusion, paraphrases (for the report)
    plot_csv: str  # `variants_csv`: quality, size, latency per variant
    gates: dict[str, dict[str, Any]]  # name -> status, value, limit (also inside metrics)


def evaluate_all(inputs: EvaluateInputs, present: Mapping[str, Path], reports: dict[str, dict[str, Any]], *,
                 params: EvaluateParams, serving: Serving, serve_model: str | None, providers: Sequence[str] | None,
                 missing: Sequence[str] = (), skipped: Mapping[str, str] | None = None,
                 previous: Previous | None = None) -> Evaluation:
    """Evaluate the retrieval baseline and every `present` variant, then the gates.

    The served variant (`serve_model`: serve.variants[0].model, `served_variant`) answers every
    sample; the others answer evaluate.other_samples_per_lang per language. `reports` are the
    earlier stages' metrics (retention gates). `providers`: ONNX execution providers. `previous`
    (`read_previous`): the previous served model, for the forgetting gates and the metrics'
    `previous` block (`previous_block`)."""
    from chatforge.io import sha256_tree
    from chatforge.knobs import report_knobs

    skipped = dict(skipped or {})
    samples, questions, judge = inputs.samples, inputs.questions, inputs.judge
    served = served_variant(serve_model, present)
    others = subset(samples, params.other_samples_per_lang)
    log.info("%d samples (%s); served variant: %s", len(samples), inputs.sample_counts, served)
    results, details = {}, {"samples": [s.__dict__ for s in samples[:20]], "served_variant": served, "variants": {},
                            "paraphrases": [q.__dict__ for q in questions]}
    results["retrieval"], extra = evaluate_retrieval(inputs.train, samples, gazetteer=inputs.gazetteer,
                                                     questions=questions, judge=judge)
    details["variants"]["retrieval"] = align_answers(extra, samples, samples[:20])
    for name, folder in present.items():
        log.info("evaluating %s (%s)", name, folder)
        asked = samples if name == served else others
        results[name], extra = evaluate_variant(name, folder, inputs.convs, asked, params, serving=serving,
                                                gazetteer=inputs.gazetteer, providers=providers, questions=questions,
                                                judge=judge)
        details["variants"][name] = align_answers(extra, asked, samples[:20])
    references = reference_scores(samples)
    gates = compute_gates(results, reports, params, served=served, references=references, previous=previous)
    for name, g in gates.items():
        log.info("gate %s: %s (value %s, limit %s)", name, g["status"], g["value"], g["limit"])
    digest = samples_sha256(samples)
    summary = {**inputs.counts, **inputs.sample_counts, **references, "served_variant": served or "none",
               "samples_sha256": digest,
               "paraphrase_questions_zh": sum(q.lang == "zh" for q in questions),
               "paraphrase_questions_en": sum(q.lang == "en" for q in questions),
               "other_samples_zh": sum(s.lang == "zh" for s in others), "other_samples_en": sum(s.lang == "en" for s in others),
               "variants_missing": ",".join(missing) or "none", "variants_skipped": ",".join(skipped) or "none",
               "gates_failed": sum(g["status"] == "fail" for g in gates.values())}
    knobs = report_knobs(sample_knobs(inputs.convs, params, inputs.sample_counts), log)
    # which folder each number is about: `chatforge export` trusts a row only for the folder with this hash
    models = {name: {"folder": str(folder), "sha256": sha256_tree(folder)} for name, folder in present.items()}
    out = {**results, "skipped": skipped, "gates": gates, "summary": summary, "knobs": knobs, "models": models}
    if previous is not None:
        out["previous"] = previous_block(results.get(served or "", {}), previous, samples_sha256=digest)
        if out["previous"].get("same_test_samples") is False:
            log.warning("the previous served model was measured on other test samples (the test split changed): "
                        "the forgetting gates compare numbers from different samples")
    return Evaluation(out, details, variants_csv(results), gates)
