"""Knowledge distillation: a smaller student, initialised from teacher layers, trained to match it.

The student keeps the teacher's width, vocabulary and head, and every k-th transformer layer
(evenly spaced, first and last always kept — the DistilBERT recipe), so it starts close to the
teacher instead of from noise. Loss per target (assistant token, or conversation intent):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones (Hinton et
al.). The quality helpers here (perplexity/BLEU, accuracy/macro-F1, size, latency) also serve prune.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
import torch
import torch.nn.functional as F

from chatforge.io import progress
from chatforge.metrics import classification_scores, latency_stats, retention
from chatforge.modeling import classifier as clf
from chatforge.modeling.data import (
    IGNORE,
    Conversation,
    collate_padded,
    conversations,
    tokenize_conversations,
)
from chatforge.modeling.device import accelerator, to_device
from chatforge.modeling.quality import assistant_perplexity, model_answer_scores
from chatforge.modeling.quality import retention as answer_retention
from chatforge.modeling.schedule import cosine_with_floor
from chatforge.runtime.folder import open_folder

LAYER_INDEX = re.compile(r"(\.(?:layers|layer)\.)(\d+)\.")


class CompressError(ValueError):
    """A compression stage cannot run; the message names the params key or input and the fix."""


def load_model(folder: Path, family: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    cls = AutoModelForCausalLM if family == "causal_lm" else AutoModelForSequenceClassification
    model = cls.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


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


# ------------------------------------------------------------------------------------ training
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor, *,
            alpha: float, temperature: float) -> torch.Tensor:
    """Mean over targets of alpha*T^2*KL(teacher_T || student_T) + (1-alpha)*CE(student, target)."""
    hard = F.cross_entropy(student_logits, targets)
    if teacher_logits is None or alpha == 0.0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
        log_target=True, reduction="batchmean",
    )
    return alpha * t * t * soft + (1.0 - alpha) * hard


def target_logits(model: Any, batch: dict[str, torch.Tensor], family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that carry a target, and those targets (assistant tokens or intents)."""
    if family == "classifier":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), batch["labels"]
    # the vocabulary projection only where an assistant token is predicted (most positions have none)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    return model.get_output_embeddings()(hidden[:, :-1][keep]).float(), targets[keep]


def make_batches(convs: list[Conversation], tokenizer: Any, *, family: str, labels: list[str] | None,
                 max_seq_len: int, batch_size: int, classifier_input: Literal["first_user", "all_user"] = "first_user") -> list[dict[str, torch.Tensor]]:
    """Padded batches of similar length (sorted, so padding is small); order fixed by the data."""
    pad = tokenizer.pad_token_id
    if family == "causal_lm":
        examples, _ = tokenize_conversations(convs, tokenizer, max_seq_len=max_seq_len, overlong="truncate")
        examples.sort(key=lambda e: len(e.input_ids))
        return [collate_padded(examples[i : i + batch_size], pad_id=pad) for i in range(0, len(examples), batch_size)]
    examples, _ = clf.classifier_examples(convs, tokenizer, labels=labels or [], mode=classifier_input, max_seq_len=max_seq_len)
    examples.sort(key=lambda e: len(e.input_ids))
    return [clf.collate_classifier(examples[i : i + batch_size], pad_id=pad) for i in range(0, len(examples), batch_size)]


def fit(student: Any, batches: list[dict[str, torch.Tensor]], *, family: str, steps: int, lr: float, seed: int,
        teacher: Any = None, alpha: float = 0.0, temperature: float = 1.0,
        masks: dict[str, torch.Tensor] | None = None, desc: str = "distill") -> list[float]:
    """`steps` AdamW steps over shuffled batches (cycled), lr decaying from `lr` to lr/100 on a
    cosine; returns the loss of every step.

    `masks` (parameter name -> 0/1 tensor) are re-applied after each step so magnitude-pruned
    weights stay exactly zero through the recovery fine-tune."""
    if not batches:
        raise CompressError(f"{desc}: no training example left after tokenization; check the train split and max_seq_len.")
    # the accelerator when there is one (train's rule); the student and teacher stay on it afterwards
    acc = accelerator()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student.to(acc.device)
    if teacher is not None:
        teacher.to(acc.device)
    masks = {name: mask.to(acc.device) for name, mask in masks.items()} if masks else masks
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    # cosine decay to lr/100 over the steps (no warmup: the student starts from trained weights); the
    # last steps at a small lr settle the weights instead of leaving them mid-jump
    scheduler = cosine_with_floor(optimizer, lr=lr, lr_min=lr / 100, warmup_steps=0, total_steps=steps)
    optimizer = acc.prepare_optimizer(optimizer, device_placement=False)
    params = dict(student.named_parameters())
    student.train()
    if teacher is not None:
        teacher.eval()
    losses: list[float] = []
    order: list[int] = []
    for _ in progress(range(steps), total=steps, desc=desc):
        if not order:
            order = torch.randperm(len(batches), generator=generator).tolist()
        batch = to_device(batches[order.pop()], acc.device)
        with acc.autocast():
            logits, targets = target_logits(student, batch, family)
            with torch.no_grad():
                teacher_logits = target_logits(teacher, batch, family)[0] if teacher is not None and alpha > 0 else None
            loss = kd_loss(logits, teacher_logits, targets, alpha=alpha, temperature=temperature)
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if masks:
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
        losses.append(float(loss.detach()))
    student.eval()
    return losses


# ------------------------------------------------------------------------------------- quality
def parameter_count(model: Any) -> int:
    """Distinct parameters (a tied embedding/head counts once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def size_mb(model: Any) -> float:
    """Bytes of the float32 safetensors file the model would write, in MB (tied weights once)."""
    return parameter_count(model) * 4 / 1e6


@torch.no_grad()
def quality(model: Any, tokenizer: Any, convs: list[Conversation], *, family: str, labels: list[str] | None,
            max_seq_len: int, bleu_samples: int, max_new_tokens: int, seed: int,
            classifier_input: Literal["first_user", "all_user"] = "first_user") -> dict[str, float]:
    """Causal LM: perplexity on assistant tokens + full answers scored by the one quality path
    (BLEU, slot carry ...); classifier: accuracy + macro-F1."""
    model.eval()
    if family == "classifier":
        batches = make_batches(convs, tokenizer, family=family, labels=labels, max_seq_len=max_seq_len, batch_size=8,
                               classifier_input=classifier_input)
        truth, pred = [], []
        for batch in batches:
            logits, targets = target_logits(model, to_device(batch, model.device), family)
            truth += [labels[i] for i in targets.tolist()]  # type: ignore[index]
            pred += [labels[i] for i in logits.argmax(-1).tolist()]  # type: ignore[index]
        scores = classification_scores(truth, pred, labels=labels or [])
        return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1}
    from chatforge.modeling.generate import TorchGenerator

    # the one perplexity path (chatforge.modeling.quality), as evaluate measures it
    scored = assistant_perplexity(TorchGenerator(model, tokenizer, fingerprint="quality"), convs, max_seq_len=max_seq_len)
    out = {"perplexity": scored["perplexity"]}
    if bleu_samples:
        out.update(model_answer_scores(model, tokenizer, convs, samples_per_lang=bleu_samples, max_new_tokens=max_new_tokens, seed=seed))
    return out


@torch.no_grad()
def latency(model: Any, tokenizer: Any, convs: list[Conversation], *, family: str, requests: int, max_new_tokens: int) -> dict[str, float]:
    """Per-request latency: a classifier forward, or greedy generation of max_new_tokens for a causal LM."""
    from chatforge.modeling.generate import GenerationConfig, TorchGenerator

    model.eval()
    prompts = [[m for m in c.messages if m["role"] != "assistant"][:1] for c in convs[:requests]]
    prompts = [p for p in prompts if p]
    seconds = []
    if family == "classifier":
        for p in prompts:
            enc = tokenizer(p[0]["content"], return_tensors="pt").to(model.device)
            start = time.perf_counter()
            model(**enc).logits.cpu()  # .cpu(): waits for an accelerator to finish
            seconds.append(time.perf_counter() - start)
    else:
        gen = TorchGenerator(model, tokenizer, fingerprint="latency")
        config = GenerationConfig(max_new_tokens=max_new_tokens)
        for p in prompts:
            start = time.perf_counter()
            gen.generate(p, config)
            seconds.append(time.perf_counter() - start)
    return latency_stats(seconds)


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
