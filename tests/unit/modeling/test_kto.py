"""The KTO loss equals TRL's on a committed fixture; the weight rule of TRL's docs; bad input is named.

tests/fixtures/kto/trl_reference.json holds TRL's own outputs (KTOTrainer._compute_loss, loss_type
"kto") on fixed batches, written by tests/fixtures/kto/make_trl_reference.py in a venv with TRL; it
names the TRL version and source. TRL is not a dependency of the project.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatforge.modeling.kto import (
    KTOError,
    check_weights,
    default_weights,
    kl_reference_point,
    kto_loss,
    mismatched_completions,
    weight_ratio,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "kto" / "trl_reference.json"
REFERENCE = json.loads(FIXTURE.read_text(encoding="utf-8"))
CASES = [(case, dtype) for case in REFERENCE["cases"] for dtype in ("float64", "float32")]


def test_the_fixture_names_its_trl_version_and_source() -> None:
    assert REFERENCE["trl_version"] == "1.16.0"
    assert len(REFERENCE["trl_source"]["sha256"]) == 64
    assert REFERENCE["trl_source"]["same_loss_code_at"]["v1.9.0"] == "35def3ee000a87f6839e66f4b7749b06274ed1b3"
    assert {case["name"] for case in REFERENCE["cases"]} == {
        "mixed_defaults", "imbalanced_weighted_kl_clamped", "all_desirable", "all_undesirable"}


@pytest.mark.parametrize(("case", "dtype"), CASES, ids=[f"{c['name']}-{d}" for c, d in CASES])
def test_loss_rewards_and_kl_equal_trls(case: dict, dtype: str) -> None:
    dt = getattr(torch, dtype)
    t = lambda key: torch.tensor(case[key], dtype=dt)  # noqa: E731
    trl = case["trl"][dtype]
    policy = t("policy_logps").requires_grad_()
    kl = kl_reference_point(t("policy_kl_logps"), t("reference_kl_logps"))
    out = kto_loss(policy, t("reference_logps"), torch.tensor(case["desirable"]), kl=kl, beta=case["beta"],
                   desirable_weight=case["desirable_weight"], undesirable_weight=case["undesirable_weight"])
    assert out.kl.item() == pytest.approx(trl["kl"], abs=1e-6)
    assert out.loss.item() == pytest.approx(trl["loss"], abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx(trl["chosen_rewards"], abs=1e-6)
    assert out.rejected_rewards.tolist() == pytest.approx(trl["rejected_rewards"], abs=1e-6)
    if out.chosen_rewards.numel():
        assert out.chosen_rewards.mean().item() == pytest.approx(trl["rewards/chosen"], abs=1e-6)
    if out.rejected_rewards.numel():
        assert out.rejected_rewards.mean().item() == pytest.approx(trl["rewards/rejected"], abs=1e-6)
    # the loss carries a gradient to the policy only; rewards and the reference point are detached
    out.loss.backward()
    assert policy.grad is not None and torch.isfinite(policy.grad).all() and policy.grad.abs().sum() > 0
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad and not out.kl.requires_grad


def test_the_reference_point_is_the_clamped_mean_and_carries_no_gradient() -> None:
    policy = torch.tensor([-10.0, -12.0], requires_grad=True)
    z0 = kl_reference_point(policy, torch.tensor([-11.0, -12.5]))
    assert z0.shape == () and z0.item() == pytest.approx(0.75) and not z0.requires_grad
    assert kl_reference_point(torch.tensor([-12.0, -12.0]), torch.tensor([-11.0, -10.0])).item() == 0.0


def test_mismatched_completions_cycle_by_one_as_trl_does() -> None:
    assert mismatched_completions(["c0", "c1", "c2"]) == ["c2", "c0", "c1"]
    with pytest.raises(KTOError, match="at least 2 examples per batch"):
        mismatched_completions(["c0"])


def test_bad_inputs_are_named() -> None:
    logps = torch.tensor([-1.0, -2.0])
    mask = torch.tensor([True, False])
    with pytest.raises(KTOError, match=r"same shape \(batch,\)"):
        kto_loss(logps, torch.tensor([-1.0, -2.0, -3.0]), mask, kl=0.0)
    with pytest.raises(KTOError, match="pass a bool tensor"):
        kto_loss(logps, logps, torch.tensor([1, 0]), kl=0.0)
    with pytest.raises(KTOError, match=r"policy_logps has shape \(2, 1\)"):
        kto_loss(logps[:, None], logps, mask, kl=0.0)
    with pytest.raises(KTOError, match="empty batch"):
        kto_loss(torch.tensor([]), torch.tensor([]), torch.tensor([], dtype=torch.bool), kl=0.0)
    with pytest.raises(KTOError, match="beta = 0"):
        kto_loss(logps, logps, mask, kl=0.0, beta=0)
    with pytest.raises(KTOError, match="undesirable_weight = -1"):
        kto_loss(logps, logps, mask, kl=0.0, undesirable_weight=-1)
    with pytest.raises(KTOError, match="one number per batch"):
        kto_loss(logps, logps, mask, kl=torch.tensor([0.1, 0.2]))
    with pytest.raises(KTOError, match="both must hold one value per example"):
        kl_reference_point(logps, torch.tensor([-1.0]))


def test_the_imbalance_rule_of_trls_docs() -> None:
    # desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3]
    assert weight_ratio(10, 30, desirable_weight=3.0, undesirable_weight=1.0) == pytest.approx(1.0)
    check_weights(10, 10, desirable_weight=1.0, undesirable_weight=1.0)
    check_weights(4, 3, desirable_weight=1.0, undesirable_weight=1.0)  # exactly 4/3
    check_weights(10, 30, desirable_weight=3.0, undesirable_weight=1.0)
    check_weights(10, 30, desirable_weight=4.0, undesirable_weight=1.0)
    check_weights(5, 0, desirable_weight=1.0, undesirable_weight=1.0)  # one kind only: nothing to balance
    with pytest.raises(KTOError, match=r"= 0\.3333, outside \[1, 4/3\].*desirable_weight in \[3\.0000, 4\.0000\]"):
        check_weights(10, 30, desirable_weight=1.0, undesirable_weight=1.0)
    with pytest.raises(KTOError, match=r"e\.g\. desirable_weight=1\.0, undesirable_weight=3\.0"):
        check_weights(30, 10, desirable_weight=1.0, undesirable_weight=1.0)
    with pytest.raises(KTOError, match="no KTO examples"):
        check_weights(0, 0, desirable_weight=1.0, undesirable_weight=1.0)
    with pytest.raises(KTOError, match="desirable_weight = 0"):
        check_weights(3, 3, desirable_weight=0.0, undesirable_weight=1.0)


@pytest.mark.parametrize(
    ("n_desirable", "n_undesirable", "weights"),
    [(10, 30, (3.0, 1.0)), (30, 10, (1.0, 3.0)), (12, 10, (1.0, 1.0)), (10, 10, (1.0, 1.0)), (4, 3, (1.0, 1.0)),
     (1, 3, (3.0, 1.0)), (3, 7, (2.34, 1.0)), (7, 3, (1.0, 2.33)), (5, 0, (1.0, 1.0)), (0, 5, (1.0, 1.0))],
)
def test_default_weights_keep_trls_one_and_upweight_the_rarer_kind(
    n_desirable: int, n_undesirable: int, weights: tuple[float, float]
) -> None:
    assert default_weights(n_desirable, n_undesirable) == weights
    check_weights(n_desirable, n_undesirable, desirable_weight=weights[0], undesirable_weight=weights[1])


def test_default_weights_always_satisfy_the_rule() -> None:
    for n_desirable in range(1, 60):
        for n_undesirable in range(1, 60):
            d, u = default_weights(n_desirable, n_undesirable)
            check_weights(n_desirable, n_undesirable, desirable_weight=d, undesirable_weight=u)
            assert min(d, u) == 1.0
