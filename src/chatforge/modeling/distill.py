"""Knowledge distillation: a smaller student, initialised from teacher layers, trained to match it.

The student keeps the teacher's width, vocabulary and head, and every k-th transformer layer
(evenly spaced, first and last always kept — the DistilBERT recipe), so it starts close to the
teacher instead of from noise. It is trained by the short fine-tune prune's recovery shares
(chatforge.modeling.short_train: KL at temperature + hard labels) and measured before/after by
chatforge.modeling.measure.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from chatforge.metrics import retention
from chatforge.modeling.measure import latency, parameter_count, quality, size_mb
from chatforge.modeling.short_train import CompressError, fit, load_model, make_batches
from chatforge.runtime.conversation import conversations
from chatforge.runtime.folder import open_folder
from chatforge.runtime.quality import retention as answer_retention

LAYER_INDEX = re.compile(r"(\.(?:layers|layer)\.)(\d+)\.")


# ------------------------------------------------------------------------------------- student
def layer_count(config: Any) -> int:
    return int(getattr(config, "num_hidden_layers", None) or config.n_layers)


def pick_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers to copy, first and last included (4 of 12 -> 0, 4, 7, 11)."""
    if not 1 <= student_layers <= teacher_layers:
        raise CompressError(f"distill.student_layers = {student_layers}: must be in [1, {teacher_layers}] (the teacher's layers)")
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def build_student(teacher: Any, *, student_layers: int) -> Any:
    """A copy of the teacher with only the picked layers (weights copied, nothing random left)."""
    picked = pick_layers(layer_count(teacher.config), student_layers)
    config = copy.deepcopy(teacher.config)
    if hasattr(config, "n_layers"):  # DistilBERT names it differently
        config.n_layers = student_layers
    else:
        config.num_hidden_layers = student_layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in picked]
    student = type(teacher)(config)
    source = teacher.state_dict()
    state = {}
    for name in student.state_dict():
        teacher_name = LAYER_INDEX.sub(lambda m: f"{m.group(1)}{picked[int(m.group(2))]}.", name, count=1)
        state[name] = source[teacher_name].clone()
    student.load_state_dict(state)
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    return student


def primary_metric(family: str, choice: str) -> tuple[str, bool]:
    """The quality number a gate compares, and whether higher is better."""
    if choice == "auto":
        choice = "answers" if family == "causal_lm" else "accuracy"
    allowed = ("answers", "perplexity", "bleu") if family == "causal_lm" else ("accuracy", "macro_f1")
    if choice not in allowed:
        raise CompressError(f"distill.retention_metric = {choice!r} does not apply to a {family} model; use auto or one of {allowed}")
    return choice, choice != "perplexity"


# ------------------------------------------------------------------------------------- distill
@dataclass
class DistillOutcome:
    model: Any
    tokenizer: Any
    family: str
    metrics: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    passed: bool = True


def distill(teacher_dir: Path, train_turns: pl.DataFrame, val_turns: pl.DataFrame, *, params: Any) -> DistillOutcome:
    """Train a student from the teacher in `teacher_dir` with `params` (a DistillParams)."""
    manifest = open_folder(teacher_dir, key="distill (teacher folder)")
    family = manifest.family
    metric, higher = primary_metric(family, params.retention_metric)
    teacher, tokenizer = load_model(teacher_dir, family)
    teacher_layers = layer_count(teacher.config)
    n = params.student_layers or max(1, teacher_layers // 2)
    if n >= teacher_layers:
        raise CompressError(f"distill.student_layers = {n}: must be below the teacher's {teacher_layers} layers")
    student = build_student(teacher, student_layers=n)
    train_convs, val_convs = conversations(train_turns), conversations(val_turns)
    val_convs = val_convs[: params.eval_max_conversations]
    labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)] if family == "classifier" else None
    batches = make_batches(train_convs, tokenizer, family=family, labels=labels, max_seq_len=params.max_seq_len, batch_size=params.batch_size)
    losses = fit(student, batches, family=family, steps=params.steps, lr=params.lr, seed=params.seed,
                 teacher=teacher, alpha=params.alpha, temperature=params.temperature)

    def measure(model: Any) -> dict[str, float]:
        q = quality(model, tokenizer, val_convs, family=family, labels=labels, max_seq_len=params.max_seq_len,
                    bleu_samples=params.bleu_samples, max_new_tokens=params.max_new_tokens, seed=params.seed)
        q.update(latency(model, tokenizer, val_convs, family=family, requests=params.latency_requests, max_new_tokens=params.max_new_tokens))
        return {**q, "params": parameter_count(model), "size_mb": size_mb(model), "layers": layer_count(model.config)}

    t, s = measure(teacher), measure(student)
    metrics: dict[str, Any] = {f"teacher_{k}": v for k, v in t.items()} | {f"student_{k}": v for k, v in s.items()}
    for name in t:
        if name in ("perplexity", "bleu", "accuracy", "macro_f1"):
            metrics[f"retention_{name}"] = retention(s[name], t[name], higher_is_better=name != "perplexity")
    metrics.update(answer_retention(s, t))
    kept = metrics["retention_answers"] if metric == "answers" else retention(s[metric], t[metric], higher_is_better=higher)
    metrics.update(
        retention=kept, retention_metric=metric, min_retention=params.min_retention,
        retention_ok=bool(kept >= params.min_retention), loss_first=losses[0], loss_last=losses[-1],
        loss_first_10_mean=sum(losses[:10]) / len(losses[:10]), loss_last_10_mean=sum(losses[-10:]) / len(losses[-10:]),
        steps=len(losses), student_layers_from_teacher=pick_layers(teacher_layers, n),
    )
    return DistillOutcome(student, tokenizer, family, metrics, losses, passed=bool(kept >= params.min_retention))
