"""Learning-rate schedule: linear warmup to `lr`, then cosine annealing down to a floor `lr_min`.

lr(s) for optimizer step s = 1, 2, ... (the step about to be taken):
  s <= warmup:  lr * s / warmup
  otherwise:    lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,  p = (s - warmup) / (total - warmup)
so the last step (s = total) trains at exactly lr_min, never below it.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, *, lr: float, lr_min: float, warmup_steps: int, total_steps: int) -> float:
    if warmup_steps and step <= warmup_steps:
        return lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_with_floor(
    optimizer: torch.optim.Optimizer, *, lr: float, lr_min: float, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose i-th value (after i scheduler.step() calls) is lr_at(i + 1)."""

    def factor(i: int) -> float:
        return lr_at(i + 1, lr=lr, lr_min=lr_min, warmup_steps=warmup_steps, total_steps=total_steps) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
