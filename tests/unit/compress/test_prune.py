"""Structural pruning on tiny models: the configured share goes, the folder reloads, shapes hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinymodels import tiny_turns, write_tiny_causal_lm, write_tiny_classifier

from chatforge.compress.prune import prune
from chatforge.modeling.short_train import CompressError
from chatforge.params import ParamsError, PruneParams, validate_section
from chatforge.runtime.folder import ModelFolderError

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
    from chatforge.modeling.short_train import load_model, make_batches
    from chatforge.runtime.conversation import conversations

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
    with pytest.raises(ModelFolderError, match="prune.source"):
        prune(tmp_path / "missing", turns, turns, params=PruneParams())
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelFolderError, match="prune.source: .* not a model folder"):
        prune(tmp_path / "x", turns, turns, params=PruneParams())


# ---------------------------------------------------------------- issue 15: heads do what prune.ratio says
LLAMA_1B_32_HEADS = (
    "prune.ratio = 0.2 with prune.heads: true would leave 24 of 32 attention heads (32 query heads in 8 KV groups of 4 "
    "lose round(4 x 0.2) = 1 each), but transformers cannot save that config: the hidden size (2048) must be a multiple "
    "of the head count. Head counts possible for this model: 16 (prune.ratio 0.5), 8 (prune.ratio 0.75). Set prune.ratio "
    "to one of those, or prune.heads: false to prune MLP channels only."
)


def test_llama_1b_shape_head_ratio_is_refused_from_the_config_alone() -> None:
    """Llama-3.2-1B: hidden 2048, 32 query heads, 8 KV heads. Ratio 0.2 leaves 24 heads, a config
    transformers refuses to save: refused from the config, before any weights exist."""
    from transformers import LlamaConfig

    from chatforge.compress.prune import check_prune

    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192)
    with pytest.raises(CompressError) as err:
        check_prune(config, ratio=0.2, heads=True, round_to=8, family="causal_lm")
    assert str(err.value) == LLAMA_1B_32_HEADS
    tiny_llama = {"hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 4, "intermediate_size": 5632}
    with pytest.raises(CompressError, match=r"would leave 24 of 32 .* 16 \(prune.ratio 0.5\), 8 \(prune.ratio 0.75\), "
                                            r"4 \(prune.ratio 0.875\)\."):
        check_prune(tiny_llama, ratio=0.2, heads=True, round_to=8, family="causal_lm")  # a config dict works too
    plan = check_prune(config, ratio=0.5, heads=True, round_to=8, family="causal_lm")
    assert (plan.heads, plan.heads_keep, plan.mlp_keep) == (32, 16, 4096)


def test_smollm2_shape_ratio_that_removes_no_head_is_refused_and_0_2_removes_a_third() -> None:
    from chatforge.compress.prune import check_prune

    smol = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536}
    with pytest.raises(CompressError) as err:
        check_prune(smol, ratio=0.1, heads=True, round_to=8, family="causal_lm")
    assert str(err.value) == (
        "prune.ratio = 0.1 with prune.heads: true removes no attention head: 9 query heads in 3 KV groups of 3 lose "
        "round(3 x 0.1) = 0 each. Head counts possible for this model: 6 (prune.ratio 0.333), 3 (prune.ratio 0.667). "
        "Set prune.ratio to one of those, or prune.heads: false to prune MLP channels only."
    )
    plan = check_prune(smol, ratio=0.2, heads=True, round_to=8, family="causal_lm")
    assert (plan.heads, plan.heads_keep) == (9, 6) and plan.heads_share == pytest.approx(1 / 3)
    knob = next(k for k in __import__("chatforge.compress.prune", fromlist=["x"]).prune_knobs(
        plan, PruneParams(ratio=0.2, heads=True), val_conversations=500) if k.key == "prune.ratio (attention heads)")
    assert (knob.requested, knob.reached, knob.far) == (0.2, 0.3333, True)


def test_ratio_that_removes_no_mlp_channel_and_heads_on_an_encoder_are_refused() -> None:
    from chatforge.compress.prune import check_prune

    with pytest.raises(CompressError) as err:
        check_prune({"intermediate_size": 128}, ratio=0.02, heads=False, round_to=8, family="causal_lm")
    assert str(err.value) == ("prune.ratio = 0.02 removes no MLP channel: 128 channels x (1 - 0.02) rounded to a multiple "
                              "of prune.round_to (8) is still 128. Raise prune.ratio above 0.0312 or lower prune.round_to.")
    with pytest.raises(CompressError, match="prune.heads: true: an encoder classifier"):
        check_prune({"intermediate_size": 128, "num_attention_heads": 4, "hidden_size": 64}, ratio=0.5, heads=True,
                    round_to=8, family="classifier")


def _write_tiny_mha(folder: Path) -> Path:
    """A tiny LLaMA without GQA: 4 heads, 4 KV heads (what model.base: scratch builds)."""
    return write_tiny_causal_lm(folder, layers=2, kv_heads=4)


def test_gqa_heads_before_after_and_share_in_the_metrics(tmp_path: Path) -> None:
    source = write_tiny_causal_lm(tmp_path / "gqa", layers=2)  # 4 query heads, 2 KV heads
    turns = tiny_turns(16)
    out = prune(source, turns, turns, params=PruneParams(ratio=0.5, heads=True, **FAST))
    m = out.metrics
    assert (m["heads_before"], m["heads_after"], m["heads_removed_share"]) == (4, 2, 0.5)
    assert (m["mlp_width_before"], m["mlp_width_after"], m["mlp_removed_share"]) == (128, 64, 0.5)
    assert out.model.config.num_key_value_heads == 2
    assert {k.key: (k.requested, k.reached) for k in out.knobs} == {
        "prune.ratio (MLP channels)": (0.5, 0.5), "prune.ratio (attention heads)": (0.5, 0.5),
        "prune.eval_max_conversations": (8, 8)}


def test_mha_heads_are_pruned_with_their_keys_and_values(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    source = _write_tiny_mha(tmp_path / "mha")
    turns = tiny_turns(16)
    with pytest.raises(CompressError, match=r"would leave 3 of 4 attention heads \(4 heads \(no GQA\) lose round\(4 x 0.25\) "
                                            r"= 1\).* 2 \(prune.ratio 0.5\), 1 \(prune.ratio 0.75\)\."):
        prune(source, turns, turns, params=PruneParams(ratio=0.25, heads=True, **FAST))
    out = prune(source, turns, turns, params=PruneParams(ratio=0.5, heads=True, **FAST))
    assert (out.metrics["heads_before"], out.metrics["heads_after"], out.metrics["heads_removed_share"]) == (4, 2, 0.5)
    assert (out.model.config.num_attention_heads, out.model.config.num_key_value_heads) == (2, 2)
    out.model.save_pretrained(tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert again.model.layers[0].self_attn.k_proj.weight.shape == (32, 64)  # 2 heads x head_dim 16
    with torch.no_grad():
        assert again(input_ids=torch.tensor([[5, 6, 7]])).logits.shape[-1] == again.config.vocab_size


def test_stage_refuses_an_impossible_head_count_before_work_without_traceback(tmp_path: Path, repo_root: Path) -> None:
    import subprocess
    import sys

    import yaml

    source = _write_tiny_mha(tmp_path / "mha")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prune": {"ratio": 0.25, "heads": True}}))
    done = subprocess.run([sys.executable, str(repo_root / "stages" / "prune.py"), str(source), "x.parquet", "y.parquet",
                           str(tmp_path / "out"), str(tmp_path / "prune.json")], check=False, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "would leave 3 of 4 attention heads" in done.stderr and not (tmp_path / "out").exists()
