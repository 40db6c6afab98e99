"""Evaluate every built variant on the test split: quality, size, speed, and the build's gates.

Only original rows are evaluated (the split stage keeps augmented rows out of val/test already;
this is checked again here). Causal LMs are scored on every assistant turn they are asked for:
the conversation up to that turn is the prompt, the turn is the reference. Classifiers are scored
on conversation intents with the same input rule the serving backend uses.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from chatforge.data.lang import detect_lang
from chatforge.evaluation import metrics
from chatforge.io import progress
from chatforge.modeling.data import IGNORE, Conversation, conversations, tokenize_chat
from chatforge.modeling.manifest import MANIFEST_NAME, read_manifest
from chatforge.params import EvaluateParams

log = logging.getLogger("chatforge.evaluate")

LANGS = ("zh", "en")
# which weights file stands for a variant's size, by backend
INT8_FILE = "model.int8.onnx"
FLOAT_ONNX_FILE = "model.onnx"


class EvaluationError(ValueError):
    """Input the evaluate stage cannot work with; the message says how to fix it."""


@dataclass(frozen=True)
class Sample:
    conversation_id: str
    lang: str
    intent: str | None
    prompt: list[dict[str, str]]
    reference: str


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


def build_samples(
    convs: Sequence[Conversation], *, max_per_lang: int, seed: int
) -> tuple[list[Sample], dict[str, int]]:
    """Up to max_per_lang (prompt, reference) pairs per language, from a seeded shuffle of the
    conversations; a reference with no text is skipped and counted."""
    order = sorted(convs, key=lambda c: c.conversation_id)
    random.Random(seed).shuffle(order)
    taken = dict.fromkeys(LANGS, 0)
    skipped_empty = 0
    samples: list[Sample] = []
    for conv in order:
        lang = conv.lang if conv.lang in LANGS else "en"
        for i, msg in enumerate(conv.messages):
            if msg["role"] != "assistant" or i == 0 or taken[lang] >= max_per_lang:
                continue
            if not (msg.get("content") or "").strip():
                skipped_empty += 1
                continue
            samples.append(Sample(conv.conversation_id, lang, conv.intent, conv.messages[:i], msg["content"]))
            taken[lang] += 1
    return samples, {"references_empty_skipped": skipped_empty, **{f"samples_{k}": v for k, v in taken.items()}}


# ------------------------------------------------------------------------------ causal language model
def sequence_logprobs(generator: Any, ids: list[int]) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t >= 1, from whichever backend the generator wraps."""
    if hasattr(generator, "model"):  # torch
        import torch

        with torch.inference_mode():
            logits = generator.model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    session, layout = generator.session, generator.layout  # onnx: one pass with an empty cache
    n = len(ids)
    empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), dtype=generator.dtype)
    feeds = {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None, :],
        **dict.fromkeys(layout.past_names, empty),
    }
    logits = session.run(None, feeds)[0][0].astype(np.float64)[:-1]
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return logp[np.arange(n - 1), np.asarray(ids[1:])]


def assistant_perplexity(generator: Any, convs: Sequence[Conversation], *, max_seq_len: int) -> dict[str, float]:
    """Perplexity on assistant tokens only (the tokens the model is trained to write), per language."""
    nll = dict.fromkeys(LANGS, 0.0)
    count = dict.fromkeys(LANGS, 0)
    for conv in progress(convs, total=len(convs), desc="perplexity"):
        ex = tokenize_chat(generator.tokenizer, conv)
        ids, labels = ex.input_ids[:max_seq_len], ex.labels[:max_seq_len]
        mask = np.asarray([lab != IGNORE for lab in labels[1:]])
        if len(ids) < 2 or not mask.any():
            continue
        lang = conv.lang if conv.lang in LANGS else "en"
        nll[lang] -= float(sequence_logprobs(generator, ids)[mask].sum())
        count[lang] += int(mask.sum())
    out = {f"perplexity_{k}": metrics.perplexity(nll[k], count[k]) for k in LANGS}
    out["perplexity"] = metrics.perplexity(sum(nll.values()), sum(count.values()))
    return out


def generate_answers(generator: Any, samples: Sequence[Sample], *, max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers, `batch_size` prompts at a time (torch decodes them as one batch; the tokens
    are the ones batch-1 decoding gives)."""
    from chatforge.modeling.generate import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    chunks = [list(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    answers: list[str] = []
    for chunk in progress(chunks, total=len(chunks), desc="generate", every=1):
        answers += [g.text.strip() for g in generator.generate_many([s.prompt for s in chunk], config, batch_size=batch_size)]
    return answers


def text_scores(samples: Sequence[Sample], answers: Sequence[str]) -> dict[str, float]:
    """BLEU/chrF per language and overall (overall BLEU = sample-weighted mean of the per-language
    BLEUs, since zh and en need different tokenisers), answer length, wrong-language share."""
    out: dict[str, float] = {}
    weighted, total = 0.0, 0
    for lang in LANGS:
        idx = [i for i, s in enumerate(samples) if s.lang == lang]
        hyps = [answers[i] for i in idx]
        refs = [samples[i].reference for i in idx]
        out[f"bleu_{lang}"] = metrics.bleu(hyps, refs, lang=lang)
        out[f"chrf_{lang}"] = metrics.chrf(hyps, refs)
        out[f"wrong_lang_{lang}"] = (
            float(np.mean([detect_lang(h) != lang for h in hyps if h])) if any(hyps) else float("nan")
        )
        if idx:
            weighted += out[f"bleu_{lang}"] * len(idx)
            total += len(idx)
    out["bleu"] = weighted / total if total else float("nan")
    out["chrf"] = metrics.chrf(list(answers), [s.reference for s in samples])
    out["answer_chars"] = float(np.mean([len(a) for a in answers])) if answers else float("nan")
    out["empty_answers"] = float(sum(1 for a in answers if not a))
    return out


def generation_latency(generator: Any, prompts: Sequence[list[dict[str, str]]], *, new_tokens: int, runs: int) -> dict[str, float]:
    """Batch-1 latency to generate `new_tokens` tokens (eos ignored by using no stop and counting
    what came), and decoded tokens per second."""
    from chatforge.modeling.generate import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    generator.generate(prompts[0], config)  # warm-up: first-call allocations are not latency
    seconds, tokens = [], 0
    for i in range(runs):
        t0 = time.perf_counter()
        gen = generator.generate(prompts[i % len(prompts)], config)
        seconds.append(time.perf_counter() - t0)
        tokens += len(gen.token_ids)
    out = metrics.latency_stats(seconds)
    out["tokens_per_s"] = tokens / sum(seconds) if sum(seconds) > 0 else float("nan")
    return out


# ------------------------------------------------------------------------------------------ classifier
def evaluate_classifier(backend: Any, convs: Sequence[Conversation], *, threshold: float) -> dict[str, Any]:
    from chatforge.modeling.generate import GenerationConfig

    labelled = [c for c in convs if c.intent]
    if not labelled:
        raise EvaluationError("no test conversation has an intent label: the classifier cannot be scored.")
    config = GenerationConfig()
    y_true, y_pred, conf, seconds = [], [], [], []
    for conv in progress(labelled, total=len(labelled), desc="classify"):
        first_user = next(m for m in conv.messages if m["role"] == "user")
        t0 = time.perf_counter()
        answer = backend.answer([first_user], config, lang=conv.lang or "en")
        seconds.append(time.perf_counter() - t0)
        y_true.append(conv.intent)
        y_pred.append(answer.intent)
        conf.append(answer.confidence)
    labels = sorted(set(backend.labels) | set(y_true))
    scores = metrics.classification_scores(y_true, y_pred, labels=labels)
    out: dict[str, Any] = {
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        **{f"f1_{k}": v for k, v in scores.per_label_f1.items()},
        **metrics.fallback_stats(conf, [t == p for t, p in zip(y_true, y_pred, strict=True)], threshold=threshold),
        **metrics.latency_stats(seconds),
    }
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


def family_of(folder: Path) -> str:
    if (folder / MANIFEST_NAME).exists():
        return read_manifest(folder).family
    raise EvaluationError(f"{folder}: {MANIFEST_NAME} missing; point the evaluate stage at a folder the pipeline built.")


def evaluate_variant(
    name: str,
    folder: Path,
    convs: Sequence[Conversation],
    samples: Sequence[Sample],
    params: EvaluateParams,
    *,
    threshold: float,
    max_seq_len: int = 1024,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics for one variant, plus extras (answers for the report, confusion matrix)."""
    weights = weights_file(folder, name)
    common = {"params": parameter_count(weights), "size_mb": weights.stat().st_size / 1e6}
    family = family_of(folder)
    backend_name = "onnx_int8" if name == "int8" else "torch"
    if family == "classifier":
        from chatforge.serving.backends import ClassifierBackend

        result = evaluate_classifier(
            ClassifierBackend(folder, backend=backend_name), convs, threshold=threshold
        )
        return {**common, **result["metrics"]}, {"confusion": result["confusion"]}
    from chatforge.modeling.generate import load_generator

    generator = load_generator(folder, backend=backend_name)
    ppl_convs = list(convs)[: params.max_ppl_conversations]
    answers = generate_answers(generator, samples, max_new_tokens=params.max_new_tokens, batch_size=params.batch_size)
    out = {
        **common,
        **text_scores(samples, answers),
        **assistant_perplexity(generator, ppl_convs, max_seq_len=max_seq_len),
        **generation_latency(
            generator, [s.prompt for s in samples[:8]], new_tokens=params.latency_new_tokens, runs=params.latency_runs
        ),
    }
    return out, {"answers": answers}


def variants_csv(results: dict[str, dict[str, Any]]) -> str:
    """Plot data for `dvc plots`: one row per variant; quality = BLEU (causal LM) or accuracy."""
    lines = ["variant,quality,size_mb,latency_p50_ms"]
    for name, r in results.items():
        quality = r.get("bleu", r.get("accuracy", float("nan")))
        lines.append(f"{name},{quality:.4f},{r.get('size_mb', float('nan')):.3f},{r.get('latency_p50_ms', float('nan')):.2f}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- gates
def gate(value: float | None, *, ok: bool | None, limit: str, warn_only: bool = False) -> dict[str, Any]:
    status = "missing" if value is None or ok is None else ("pass" if ok else ("warn" if warn_only else "fail"))
    return {"value": value, "limit": limit, "status": status}


def compute_gates(variants: dict[str, dict[str, Any]], reports: dict[str, dict[str, Any]], params: EvaluateParams) -> dict[str, dict[str, Any]]:
    g = params.gates
    out: dict[str, dict[str, Any]] = {}
    # val loss - train loss at the end of training (signed: val below train is no overfitting)
    gap = _first_number(reports.get("train", {}), ("val_gap", "train_val_gap"))
    out["train_val_gap"] = gate(gap, ok=None if gap is None else gap <= g.max_gap, limit=f"<= {g.max_gap}")
    teacher = variants.get("teacher", {})
    ppl = teacher.get("perplexity")
    lo, hi = g.perplexity_band
    ok_ppl = None if ppl is None or _nan(ppl) else lo <= ppl <= hi
    out["teacher_perplexity_band"] = gate(ppl, ok=ok_ppl, limit=f"[{lo}, {hi}]", warn_only=True)
    student = variants.get("student", {})
    ret = _retention(teacher, student)
    out["distill_retention"] = gate(ret, ok=None if ret is None else ret >= g.min_retention, limit=f">= {g.min_retention}")
    q = reports.get("quantize", {})
    red = _size_reduction(q)
    out["int8_size_reduction"] = gate(
        red, ok=None if red is None else red >= g.min_int8_size_reduction, limit=f">= {g.min_int8_size_reduction}"
    )
    int8, parent = variants.get("int8", {}), variants.get(_quantize_source(q), {})
    if "bleu" in int8 and "bleu" in parent:
        drop = parent["bleu"] - int8["bleu"]
        out["int8_bleu_drop"] = gate(drop, ok=drop <= g.max_int8_bleu_drop, limit=f"<= {g.max_int8_bleu_drop}")
    elif "accuracy" in int8 and "accuracy" in parent:
        drop = parent["accuracy"] - int8["accuracy"]
        out["int8_accuracy_drop"] = gate(drop, ok=drop <= g.max_int8_accuracy_drop, limit=f"<= {g.max_int8_accuracy_drop}")
    else:
        out["int8_quality_drop"] = gate(None, ok=None, limit="int8 and its source variant both evaluated")
    return out


def _retention(teacher: dict[str, Any], student: dict[str, Any]) -> float | None:
    """Classifier: macro-F1 ratio. Causal LM: teacher/student test perplexity, the same measure
    the distill stage gates on by default (BLEU on a few dozen samples is too noisy to gate on;
    the BLEU ratio is still visible in the variant table)."""
    if "macro_f1" in teacher and "macro_f1" in student:
        return metrics.retention(student["macro_f1"], teacher["macro_f1"])
    t, s = teacher.get("perplexity"), student.get("perplexity")
    if isinstance(t, float) and isinstance(s, float) and not (_nan(t) or _nan(s)):
        return metrics.retention(s, t, higher_is_better=False)
    return None


def _size_reduction(quantize_report: dict[str, Any]) -> float | None:
    ratio = _first_number(quantize_report, ("size_ratio", "int8_size_ratio"))
    return None if ratio is None else 1.0 - ratio


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
