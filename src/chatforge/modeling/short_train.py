"""The short fine-tune that distillation and prune's recovery share: padded batches, a few hundred
AdamW steps on a cosine to lr/100, optionally against a teacher (KL at temperature + hard labels).

Loss per target (assistant token, or conversation intent):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones (Hinton et
al.); alpha 0 (prune's recovery) is plain cross-entropy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from chatforge.io import progress
from chatforge.modeling import classifier as clf
from chatforge.modeling.data import collate_padded
from chatforge.modeling.schedule import cosine_with_floor
from chatforge.runtime.conversation import IGNORE, Conversation, tokenize_conversations
from chatforge.runtime.device import accelerator, to_device
from chatforge.runtime.folder import load_torch


class CompressError(ValueError):
    """A compression stage cannot run; the message names the params key or input and the fix."""


def load_model(folder: Path, family: str) -> tuple[Any, Any]:
    """The folder's model in float32 (chatforge.runtime.folder.load_torch) and its tokenizer, padded with EOS."""
    model, tokenizer, _ = load_torch(folder, family=family, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


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
