"""Structural pruning on tiny models: the configured share goes, the folder reloads, shapes hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinymodels import tiny_turns, write_tiny_causal_lm, write_tiny_classifier

from chatforge.compress.prune import prune
from chatforge.modeling.distill import CompressError
from chatforge.params import ParamsError, PruneParams, validate_section

torch.set_num_threads(1)
FAST = {"bleu_samples": 2, "max_new_tokens": 4, "latency_requests": 2, "eval_max_conversations": 8, "recovery_steps": 4}


def _prunable(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_causal_lm_prune_drops_the_ratio_and_reloads(tmp_path: Path, criterion: str) -> None:
    from transformers import AutoModelForCausalLM

    source = write_tiny_causal_lm(tmp_path / "student", layers=2)
    before = AutoModelForCausalLM.from_pretrained(source)
    turns = tiny_turns(16)
    out = prune(source, turns, turns, params=PruneParams(ratio=0.5, criterion=criterion, heads=True, **FAST))
    # MLP channels and query heads: half of each goes; k/v projections (KV groups) stay
    expected = _prunable(before) - before.model.layers[0].self_attn.k_proj.weight.numel() * 2 * 2
    kept = _prunable(out.model) - out.model.model.layers[0].self_attn.k_proj.weight.numel() * 2 * 2
    assert kept == pytest.approx(expected * 0.5, rel=0.1)
    assert out.metrics["mlp_width_after"] == 64 and out.metrics["heads_after"] == 2
    assert out.metrics["after_params"] < out.metrics["before_params"]
    assert 0.0 < out.metrics["magnitude_sparsity"] < 1.0
    folder = tmp_path / "pruned"
    out.model.save_pretrained(folder)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)  # plain from_pretrained, no custom code
    assert reloaded.config.intermediate_size == 64 and reloaded.config.num_attention_heads == 2
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert reloaded(input_ids=ids).logits.shape == before(input_ids=ids).logits.shape


@pytest.mark.parametrize("criterion", ["taylor", "magnitude"])
def test_taylor_drops_dead_channels_that_magnitude_keeps(tmp_path: Path, criterion: str) -> None:
    """Channels with big gate/up weights but a zero down_proj column contribute nothing: Taylor
    (|w * grad|) scores them 0 and removes exactly them, so the logits do not move; magnitude keeps them."""
    from chatforge.compress.prune import prune_mlp
    from chatforge.modeling.data import conversations
    from chatforge.modeling.distill import load_model, make_batches

    model, tokenizer = load_model(write_tiny_causal_lm(tmp_path / "m", layers=2), "causal_lm")
    dead = list(range(0, 128, 8))  # 16 of 128 channels per layer
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, dead] = 0.0
            layer.mlp.gate_proj.weight[dead] *= 10
            layer.mlp.up_proj.weight[dead] *= 10
    batches = make_batches(conversations(tiny_turns(16)), tokenizer, family="causal_lm", labels=None, max_seq_len=64, batch_size=4)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert prune_mlp(model, batches[:2], ratio=0.125, criterion=criterion, round_to=8, family="causal_lm") == (128, 112)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    large_rows_left = int((model.model.layers[0].mlp.gate_proj.weight.norm(dim=1) > 0.5).sum())
    if criterion == "taylor":
        assert torch.allclose(before, after, atol=1e-5) and large_rows_left == 0
    else:
        assert not torch.allclose(before, after, atol=1e-3) and large_rows_left == 16


def test_magnitude_zeros_stay_zero_through_recovery(tmp_path: Path) -> None:
    source = write_tiny_causal_lm(tmp_path / "student", layers=2)
    turns = tiny_turns(16)
    out = prune(source, turns, turns, params=PruneParams(ratio=0.25, magnitude_threshold=0.02, heads=False, **FAST))
    w = out.model.model.layers[0].mlp.down_proj.weight
    zero_share = float((w == 0).float().mean())
    assert zero_share > 0.5  # init std 0.02: most |w| are below 0.02 and must stay exactly 0 after training
    assert out.metrics["heads_after"] is None


def test_classifier_prune_mlp(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    source = write_tiny_classifier(tmp_path / "clf", layers=2)
    turns = tiny_turns(16)
    out = prune(source, turns, turns, params=PruneParams(ratio=0.5, criterion="taylor", **FAST))
    assert out.model.config.intermediate_size == 64
    out.model.save_pretrained(tmp_path / "out")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert again(input_ids=torch.tensor([[2, 5, 6, 3]])).logits.shape == (1, 3)


def test_ratio_outside_unit_interval_is_a_params_error() -> None:
    for bad in (0, 1, 1.5, "-0.1"):
        with pytest.raises(ParamsError, match=r"prune\.ratio"):
            validate_section("prune", {"ratio": bad}, PruneParams)
    assert validate_section("prune", {"ratio": "0.3"}, PruneParams).ratio == 0.3


def test_missing_or_non_model_source(tmp_path: Path) -> None:
    turns = tiny_turns(4)
    with pytest.raises(CompressError, match="prune.source"):
        prune(tmp_path / "missing", turns, turns, params=PruneParams())
    (tmp_path / "x").mkdir()
    with pytest.raises(CompressError, match="prune.source: .* not a model folder"):
        prune(tmp_path / "x", turns, turns, params=PruneParams())
