"""KTO: learning from unpaired thumbs-up / thumbs-down completions against a frozen reference model.

Kahneman-Tversky Optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization", https://arxiv.org/abs/2402.01306, Eq. 7 and 8). Each example is a prompt x, a
completion y and one bit: desirable (thumbs-up, an approved correction) or undesirable (thumbs-down).
With the implied reward r(x, y) = log pi_theta(y|x) - log pi_ref(y|x) and the reference point z0
(an estimate of KL(pi_theta || pi_ref), detached), the per-example loss is

    desirable:    w_D * (1 - sigmoid(beta * (r - z0)))
    undesirable:  w_U * (1 - sigmoid(beta * (z0 - r)))

and the batch loss is the mean over all examples of both kinds (NaN-ignoring). This module computes
exactly what TRL's `KTOTrainer` computes for its default `loss_type="kto"`
(trl/trainer/kto_trainer.py, `KTOTrainer._compute_loss`; until huggingface/trl#5999, commit
3f6f7d28075ffa3107372feae39a870d9be1ee02, the same lines were the method `kto_loss`, which returned the
unreduced losses that the caller then averaged with `losses.nanmean()`). tests/unit/modeling/test_kto.py
checks the values against TRL's own code on a committed fixture (tests/fixtures/kto/trl_reference.json:
TRL 1.16.0, and the git commits whose loss code is the same).

The reference point: TRL pairs every prompt of a batch with another example's completion (the
completions cycled by one: the last example's completion goes to the first prompt, see
`mismatched_completions`), sums the log-probabilities of those mismatched completions under the policy
and the reference, and takes z0 = max(0, mean(policy - reference)), detached so no gradient flows
through it (`kl_reference_point`).

Torch is imported lazily so that importing this module costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# TRL's KTOConfig defaults (trl/trainer/kto_config.py)
DEFAULT_BETA = 0.1
DEFAULT_DESIRABLE_WEIGHT = 1.0
DEFAULT_UNDESIRABLE_WEIGHT = 1.0
# the documented imbalance rule: desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
# lies in [1, 4/3] (TRL docs/source/kto_trainer.md, "Imbalanced data"; Eq. 8 of the KTO paper)
WEIGHT_RATIO_MIN = 1.0
WEIGHT_RATIO_MAX = 4.0 / 3.0
_RATIO_TOLERANCE = 1e-9  # weights with two decimals land a hair off an exact bound in binary floats


class KTOError(ValueError):
    """A KTO input or setting that cannot be used; the message names it and how to fix it."""


@dataclass(frozen=True)
class KTOLoss:
    """What `kto_loss` returns (TRL's names in brackets).

    loss: 0-dim tensor, the batch loss to backpropagate [loss].
    chosen_rewards: shape (n_desirable,), beta * (policy - reference) log-prob of each desirable
        example in batch order, detached [chosen_rewards]; nats scaled by beta.
    rejected_rewards: shape (n_undesirable,), the same for the undesirable examples [rejected_rewards].
    kl: 0-dim tensor, the reference point z0 the loss used (detached) [kl].
    """

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    kl: torch.Tensor


def mismatched_completions(completions: list[T]) -> list[T]:
    """The completions TRL pairs with the prompts of one batch to estimate the KL term: cycled by one,
    so prompt i gets completion i-1 and the first prompt the last completion.

    [c0, c1, c2] -> [c2, c0, c1] (TRL: `KL_completion_ids = [completion_ids[-1]] + completion_ids[:-1]`,
    applied per batch of `per_device_train_batch_size`). A batch of one pairs the prompt with its own
    completion, which makes z0 the implied reward itself: TRL refuses batch size 1, and so does this.
    Raises KTOError for fewer than two completions.
    """
    if len(completions) < 2:
        raise KTOError(
            f"KTO's KL estimate needs at least 2 examples per batch (got {len(completions)}): with one, the "
            "mismatched completion is the example's own and the reference point equals its reward. Raise the batch size."
        )
    return completions[-1:] + completions[:-1]


def kl_reference_point(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean(policy_kl_logps - reference_kl_logps)), detached: a 0-dim tensor.

    policy_kl_logps, reference_kl_logps: shape (batch,), the summed log-probabilities (nats) of the
    mismatched completions (`mismatched_completions`) under the policy and the frozen reference.
    As TRL's `(KL_logps - ref_KL_logps).mean().detach()`, then `.clamp(min=0)` (on one process TRL's
    gather across ranks is the identity; on several it averages the per-rank means).
    Raises KTOError when the shapes differ or are not (batch,).
    """
    _check_vector("policy_kl_logps", policy_kl_logps)
    _check_vector("reference_kl_logps", reference_kl_logps)
    if policy_kl_logps.shape != reference_kl_logps.shape:
        raise KTOError(
            f"policy_kl_logps has shape {tuple(policy_kl_logps.shape)} but reference_kl_logps "
            f"{tuple(reference_kl_logps.shape)}: both must hold one value per example of the same batch"
        )
    return (policy_kl_logps - reference_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    *,
    kl: torch.Tensor | float,
    beta: float = DEFAULT_BETA,
    desirable_weight: float = DEFAULT_DESIRABLE_WEIGHT,
    undesirable_weight: float = DEFAULT_UNDESIRABLE_WEIGHT,
) -> KTOLoss:
    """The KTO loss of one batch, value for value what TRL's KTOTrainer computes (loss_type "kto").

    policy_logps: shape (batch,), the summed log-probability (nats) of each example's completion tokens
        given its prompt under the policy being trained (carries the gradient).
    reference_logps: shape (batch,), the same under the frozen reference model (no gradient needed).
    desirable: shape (batch,), bool: True for a desirable example (thumbs-up, approved correction),
        False for an undesirable one (thumbs-down).
    kl: the reference point z0 in nats, a number or a 0-dim / 1-element tensor (`kl_reference_point`).
    beta: > 0, how far the policy may move from the reference (TRL default 0.1).
    desirable_weight, undesirable_weight: > 0, the loss weights of the two kinds (TRL default 1.0 each;
        see `check_weights` / `default_weights` for the imbalance rule).

    Returns KTOLoss (loss, chosen_rewards, rejected_rewards, kl). Desirable losses come first in the
    mean, then undesirable ones, each in batch order, as in TRL (`torch.cat` then `nanmean`).
    Raises KTOError on a shape mismatch, a non-bool mask, an empty batch, beta <= 0 or a weight <= 0.
    Source: Ethayarajh et al. 2024, Eq. 7; TRL trl/trainer/kto_trainer.py (see the module docstring).
    """
    import torch
    import torch.nn.functional as F

    _check_vector("policy_logps", policy_logps)
    _check_vector("reference_logps", reference_logps)
    _check_vector("desirable", desirable)
    if not (policy_logps.shape == reference_logps.shape == desirable.shape):
        raise KTOError(
            f"policy_logps {tuple(policy_logps.shape)}, reference_logps {tuple(reference_logps.shape)} and "
            f"desirable {tuple(desirable.shape)} must have the same shape (batch,): one value per example"
        )
    if desirable.dtype != torch.bool:
        raise KTOError(f"desirable has dtype {desirable.dtype}: pass a bool tensor (True = desirable, False = undesirable)")
    if policy_logps.shape[0] == 0:
        raise KTOError("kto_loss got an empty batch: pass at least one example")
    if not (beta > 0 and math.isfinite(beta)):
        raise KTOError(f"beta = {beta!r}: must be a finite number > 0 (TRL's default is {DEFAULT_BETA})")
    for name, weight in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not (weight > 0 and math.isfinite(weight)):
            raise KTOError(f"{name} = {weight!r}: must be a finite number > 0 (TRL's default is 1.0)")
    z0 = torch.as_tensor(kl, dtype=policy_logps.dtype, device=policy_logps.device)
    if z0.numel() != 1:
        raise KTOError(f"kl has {z0.numel()} values: the reference point is one number per batch (kl_reference_point)")

    # boolean indexing keeps the batch order and gives empty tensors for a kind the batch lacks
    logratios = policy_logps - reference_logps
    chosen_logratios, rejected_logratios = logratios[desirable], logratios[~desirable]
    chosen_losses = 1 - F.sigmoid(beta * (chosen_logratios - z0))
    rejected_losses = 1 - F.sigmoid(beta * (z0 - rejected_logratios))
    chosen_rewards, rejected_rewards = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses), 0)
    return KTOLoss(loss=losses.nanmean(), chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, kl=z0)


# ------------------------------------------------------------------------------------- weights
def weight_ratio(
    n_desirable: int, n_undesirable: int, *, desirable_weight: float, undesirable_weight: float
) -> float:
    """desirable_weight * n_desirable / (undesirable_weight * n_undesirable): the quantity TRL's docs
    ask to keep in [1, 4/3]. Raises KTOError when n_undesirable or a weight is not > 0."""
    _check_counts(n_desirable, n_undesirable)
    if n_undesirable == 0:
        raise KTOError("weight_ratio needs n_undesirable > 0: with no undesirable examples there is nothing to balance")
    for name, weight in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not (weight > 0 and math.isfinite(weight)):
            raise KTOError(f"{name} = {weight!r}: must be a finite number > 0")
    return desirable_weight * n_desirable / (undesirable_weight * n_undesirable)


def check_weights(
    n_desirable: int, n_undesirable: int, *, desirable_weight: float, undesirable_weight: float
) -> None:
    """Raise KTOError unless the weights satisfy TRL's documented imbalance rule:

        1 <= desirable_weight * n_desirable / (undesirable_weight * n_undesirable) <= 4/3

    Source: TRL docs/source/kto_trainer.md, "Imbalanced data" ("upweight the less common type such that
    the ratio of (desirable_weight x number of positives) to (undesirable_weight x number of negatives)
    is in the range 1:1 to 4:3"), from Eq. 8 of Ethayarajh et al. 2024. TRL itself only logs a warning
    (KTOTrainer._prepare_dataset, bounds rounded to 2 decimals and 4/3 written 1.33); here it is an error
    that names the weights that would pass. The rule needs both kinds: with no desirable or no
    undesirable examples only one loss term exists and any positive weights pass.
    Raises KTOError also for negative counts, no examples at all, or a weight that is not > 0.
    """
    _check_counts(n_desirable, n_undesirable)
    if n_desirable + n_undesirable == 0:
        raise KTOError("no KTO examples (0 desirable, 0 undesirable): export feedback first (`chatforge feedback export-kto`)")
    for name, weight in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not (weight > 0 and math.isfinite(weight)):
            raise KTOError(f"{name} = {weight!r}: must be a finite number > 0")
    if n_desirable == 0 or n_undesirable == 0:
        return
    ratio = weight_ratio(n_desirable, n_undesirable, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    if WEIGHT_RATIO_MIN - _RATIO_TOLERANCE <= ratio <= WEIGHT_RATIO_MAX + _RATIO_TOLERANCE:
        return
    suggested_d, suggested_u = default_weights(n_desirable, n_undesirable)
    low_d = n_undesirable * undesirable_weight / n_desirable
    low_u = n_desirable * desirable_weight / (n_undesirable * WEIGHT_RATIO_MAX)
    high_u = n_desirable * desirable_weight / n_undesirable
    raise KTOError(
        f"KTO weights out of balance: desirable_weight {desirable_weight} x {n_desirable} desirable / "
        f"(undesirable_weight {undesirable_weight} x {n_undesirable} undesirable) = {ratio:.4f}, outside "
        f"[1, 4/3] (TRL's rule for imbalanced data). Set EITHER desirable_weight in [{low_d:.4f}, "
        f"{low_d * WEIGHT_RATIO_MAX:.4f}] OR undesirable_weight in [{low_u:.4f}, {high_u:.4f}] "
        f"(e.g. desirable_weight={suggested_d}, undesirable_weight={suggested_u})."
    )


def default_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that satisfy `check_weights`, keeping TRL's 1.0 where it can.

    The rule of TRL's docs ("upweight the less common type", Imbalanced data): one weight stays 1.0 and
    the less common kind's weight is the smallest two-decimal value that puts the ratio in [1, 4/3]:
    - ratio of counts already in [1, 4/3], or one kind absent: (1.0, 1.0), TRL's defaults;
    - fewer desirable (the usual feedback: more thumbs-down): desirable_weight = n_undesirable /
      n_desirable rounded up to 2 decimals (ratio in [1, 1.01]);
    - desirable more than 4/3 of undesirable: undesirable_weight = n_desirable / n_undesirable rounded
      down to 2 decimals (ratio in [1, 1.33/1.32]).
    Examples: (10, 30) -> (3.0, 1.0); (30, 10) -> (1.0, 3.0); (12, 10) -> (1.0, 1.0); (1, 3) -> (3.0, 1.0).
    Raises KTOError for negative counts or no examples at all.
    """
    _check_counts(n_desirable, n_undesirable)
    if n_desirable + n_undesirable == 0:
        raise KTOError("no KTO examples (0 desirable, 0 undesirable): there is nothing to weigh")
    if n_desirable == 0 or n_undesirable == 0:
        return DEFAULT_DESIRABLE_WEIGHT, DEFAULT_UNDESIRABLE_WEIGHT
    if n_desirable < n_undesirable:
        return math.ceil(100 * n_undesirable / n_desirable) / 100, DEFAULT_UNDESIRABLE_WEIGHT
    if 3 * n_desirable <= 4 * n_undesirable:  # n_desirable / n_undesirable in [1, 4/3], exactly in integers
        return DEFAULT_DESIRABLE_WEIGHT, DEFAULT_UNDESIRABLE_WEIGHT
    return DEFAULT_DESIRABLE_WEIGHT, math.floor(100 * n_desirable / n_undesirable) / 100


# ------------------------------------------------------------------------------------- checks
def _check_vector(name: str, tensor: torch.Tensor) -> None:
    if getattr(tensor, "ndim", None) != 1:
        shape = tuple(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__
        raise KTOError(f"{name} has shape {shape}: pass a 1-D torch tensor of shape (batch,), one value per example")


def _check_counts(n_desirable: int, n_undesirable: int) -> None:
    if n_desirable < 0 or n_undesirable < 0:
        raise KTOError(f"example counts must be >= 0 (got n_desirable={n_desirable}, n_undesirable={n_undesirable})")


__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_DESIRABLE_WEIGHT",
    "DEFAULT_UNDESIRABLE_WEIGHT",
    "WEIGHT_RATIO_MAX",
    "WEIGHT_RATIO_MIN",
    "KTOError",
    "KTOLoss",
    "check_weights",
    "default_weights",
    "kl_reference_point",
    "kto_loss",
    "mismatched_completions",
    "weight_ratio",
]
