"""The training loop on tiny scratch models: freezing, unfreezing, schedule, label smoothing, dropout,
early stopping, exact resume, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch
import trainkit as tk
from safetensors.torch import load_model

from chatforge.modeling import freezing
from chatforge.modeling.schedule import cosine_with_floor, lr_at
from chatforge.modeling.train import TrainError, causal_loss_sums, check_inputs, latest_checkpoint, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame]:
    return tk.turns(48), tk.turns(12, seed=1, prefix="v")


@pytest.fixture(scope="module")
def causal_base(tmp_path_factory: pytest.TempPathFactory, data) -> Path:
    return tk.build_base(tmp_path_factory.mktemp("base"), tk.scratch_params("causal_lm"), data[0])


def _run(base: Path, data, tmp: Path | None = None, **kw):
    return train(
        model_params=tk.scratch_params("causal_lm"), train_params=tk.tparams(**kw), base_dir=base,
        train_turns=data[0], val_turns=data[1], checkpoint_dir=tmp,
    )


def _base_state(base: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(base).state_dict().items()}


def test_freezing_keeps_frozen_params_bit_identical(causal_base, data):
    before = _base_state(causal_base)
    out = _run(causal_base, data, freeze="bottom", freeze_layers=1, freeze_embeddings=True, max_steps=4)
    after = out.model.state_dict()
    frozen = [k for k in before if k.startswith(("model.layers.0.", "model.embed_tokens", "lm_head"))]
    trainable = [k for k in before if k.startswith(("model.layers.1.", "model.norm"))]
    assert frozen and trainable
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    for k in trainable:
        assert not torch.equal(before[k], after[k]), k


def test_all_but_head_trains_only_the_head_side(causal_base, data):
    before = _base_state(causal_base)
    out = _run(causal_base, data, freeze="all_but_head", max_steps=3)
    after = out.model.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (k == "model.norm.weight"), k  # tied head = embeddings, so frozen too


def test_progressive_unfreezing_happens_at_configured_steps(causal_base, data):
    out = _run(causal_base, data, freeze="all_but_head", unfreeze_layers=1, unfreeze_every_steps=2, max_steps=6)
    assert out.details["unfreeze_events"] == [
        {"step": 2, "epoch": 0, "frozen_layers": 1},
        {"step": 4, "epoch": 0, "frozen_layers": 0},
    ]


def test_frozen_layer_count_by_epochs():
    counts = [
        freezing.frozen_layer_count(n_layers=6, mode="bottom", freeze_layers=5, unfreeze_layers=2,
                                    unfreeze_every_steps=None, unfreeze_every_epochs=2, step=0, epoch=e)
        for e in range(7)
    ]
    assert counts == [5, 5, 3, 3, 1, 1, 0]


@pytest.mark.parametrize("step", [1, 5, 10, 11, 30, 55, 99, 100])
def test_lr_schedule_matches_cosine_formula(step):
    lr, lr_min, warmup, total = 1e-5, 1e-7, 10, 100
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = cosine_with_floor(opt, lr=lr, lr_min=lr_min, warmup_steps=warmup, total_steps=total)
    for _ in range(step - 1):
        opt.step()
        sched.step()
    used = opt.param_groups[0]["lr"]  # the lr of optimizer step `step`
    if step <= warmup:
        expected = lr * step / warmup
    else:
        expected = lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    assert used == pytest.approx(expected, rel=1e-12)
    assert lr_at(total, lr=lr, lr_min=lr_min, warmup_steps=warmup, total_steps=total) == pytest.approx(lr_min)
    assert used >= lr_min or step <= warmup


def test_label_smoothing_reaches_the_loss(causal_base, data):
    from transformers import AutoModelForCausalLM

    from chatforge.modeling.data import collate_packed, pack
    from chatforge.modeling.train import load_for_training
    from chatforge.runtime.conversation import conversations, tokenize_conversations

    model, tok = load_for_training(tk.scratch_params(), tk.tparams(), causal_base, labels=None)
    ex, _ = tokenize_conversations(conversations(data[0])[:4], tok, max_seq_len=64, overlong="truncate")
    batch = collate_packed(pack(ex, max_seq_len=64), pad_id=tok.pad_token_id)
    model.eval()
    smoothed, nll = causal_loss_sums(model, batch, label_smoothing=0.2)
    logits = AutoModelForCausalLM.from_pretrained(causal_base)(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"]
    ).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logp = logits[keep].log_softmax(-1)
    plain = -logp.gather(1, targets[keep][:, None]).sum()
    uniform = -logp.mean(-1).sum()
    assert float(nll) == pytest.approx(float(plain), rel=1e-4)
    assert float(smoothed) == pytest.approx(float(0.8 * plain + 0.2 * uniform), rel=1e-4)


def test_dropout_overrides_reach_the_config(tmp_path, data):
    from chatforge.modeling.train import load_for_training

    mp = tk.scratch_params("classifier")
    base = tk.build_base(tmp_path, mp, data[0])
    model, _ = load_for_training(mp, tk.tparams(dropout=0.25, attention_dropout=0.15), base, labels=["a", "b"])
    assert model.config.hidden_dropout_prob == 0.25
    assert model.config.attention_probs_dropout_prob == 0.15
    assert model.bert.encoder.layer[0].output.dropout.p == 0.25


def test_dropout_override_unknown_to_the_architecture_is_a_clear_error(causal_base):
    from chatforge.modeling.train import load_for_training

    with pytest.raises(TrainError, match=r"train\.dropout = 0.2: a llama model has no such dropout"):
        load_for_training(tk.scratch_params(), tk.tparams(dropout=0.2), causal_base, labels=None)


def test_early_stopping_after_patience_evals_on_unlearnable_val(causal_base, data):
    # val answers are random strings: nothing learnt from train lowers their loss for long
    import random

    rng = random.Random(3)
    noise = data[1].with_columns(
        pl.when(pl.col("role") == "assistant")
        .then(pl.col("content").map_elements(lambda _: "".join(rng.choice("qzxjkvw#@!") for _ in range(30)), return_dtype=pl.String))
        .otherwise(pl.col("content"))
        .alias("content")
    )
    out = train(
        model_params=tk.scratch_params(), train_params=tk.tparams(lr=3e-2, warmup_steps=0, max_steps=200, eval_every_steps=1,
                                                                  early_stopping_patience=3, label_smoothing=0.0),
        base_dir=causal_base, train_turns=data[0], val_turns=noise,
    )
    evals = [r["val/loss"] for r in out.history if "val/loss" in r]
    assert out.metrics["stopped_early"] is True
    assert out.metrics["steps"] < 200
    best = min(evals[:-3])
    assert all(v >= best for v in evals[-3:])  # the last `patience` evals did not improve
    assert min(evals[:-3]) == min(evals)  # ... and the one before them was the best


def test_resume_from_checkpoint_gives_identical_weights(tmp_path, causal_base, data):
    kw = {"max_steps": 8, "checkpoint_every_steps": 3, "attention_dropout": 0.1, "eval_every_steps": 4}
    full = _run(causal_base, data, tmp_path / "a", **kw)
    # a run that "crashed" after step 6: keep only its checkpoints, then start again
    part = tmp_path / "b"
    _run(causal_base, data, part, **{**kw, "max_steps": 8})
    assert latest_checkpoint(part).name == "step-00000006"
    resumed = _run(causal_base, data, part, **kw)
    assert resumed.metrics["resumed_from_step"] == 6
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train/loss"] for r in full.history] == [r["train/loss"] for r in resumed.history]


def test_checkpoint_holds_model_weights(tmp_path, causal_base, data):
    out = _run(causal_base, data, tmp_path, max_steps=4, checkpoint_every_steps=2)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step-00000002"
    model, _ = __import__("chatforge.modeling.train", fromlist=["x"]).load_for_training(
        tk.scratch_params(), tk.tparams(), causal_base, labels=None
    )
    load_model(model, str(ckpt / "model.safetensors"))
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, out.model.model.layers[0].mlp.up_proj.weight)
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.pt", "rng-0.json", "state.json"]


# ------------------------------------------------------------------------------- bad input
def test_empty_train_split_is_a_clear_error(causal_base, data):
    with pytest.raises(TrainError, match="train data is empty"):
        check_inputs(tk.scratch_params(), tk.tparams(), base_dir=causal_base, train_turns=data[0].head(0), val_turns=data[1])


def test_batch_larger_than_data_names_the_key(causal_base, data):
    with pytest.raises(TrainError, match=r"train\.batch_size = 64 is larger than the train data \(48 conversations\)"):
        check_inputs(tk.scratch_params(), tk.tparams(batch_size=64), base_dir=causal_base, train_turns=data[0], val_turns=data[1])
    with pytest.raises(TrainError, match=r"grad_accum_steps"):
        check_inputs(tk.scratch_params(), tk.tparams(batch_size=16, grad_accum_steps=4), base_dir=causal_base,
                     train_turns=data[0], val_turns=data[1])


def test_sequence_longer_than_context_names_the_key(causal_base, data):
    with pytest.raises(TrainError, match=r"train\.max_seq_len = 512 exceeds the model's context \(max_position_embeddings = 256"):
        check_inputs(tk.scratch_params(), tk.tparams(max_seq_len=512), base_dir=causal_base, train_turns=data[0], val_turns=data[1])


def test_family_differs_from_base_folder(causal_base, data):
    with pytest.raises(TrainError, match="model.family is 'classifier' but .* was built as 'causal_lm'"):
        check_inputs(tk.scratch_params("classifier"), tk.tparams(), base_dir=causal_base, train_turns=data[0], val_turns=data[1])


def test_overlong_conversations_are_truncated_or_dropped_and_counted(causal_base, data):
    truncated = _run(causal_base, data, max_steps=1, max_seq_len=40, overlong="truncate")
    dropped = _run(causal_base, data, max_steps=1, max_seq_len=40, overlong="drop")
    assert truncated.metrics["train_truncated"] > 0 and truncated.metrics["train_dropped_overlong"] == 0
    assert dropped.metrics["train_dropped_overlong"] == truncated.metrics["train_truncated"]
    assert dropped.metrics["train_truncated"] == 0


def test_lora_trains_adapters_and_publishes_a_plain_merged_model(causal_base, data):
    from transformers import LlamaForCausalLM

    before = _base_state(causal_base)
    out = _run(causal_base, data, max_steps=3, lr=1e-2, lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert type(out.model) is LlamaForCausalLM
    after = out.model.state_dict()
    assert set(after) == set(before)  # no adapter keys left: merged
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


def test_gradient_checkpointing_gives_the_same_updates(causal_base, data):
    plain = _run(causal_base, data, max_steps=3)
    ckpt = _run(causal_base, data, max_steps=3, gradient_checkpointing=True)
    assert [r["train/loss"] for r in ckpt.history] == pytest.approx([r["train/loss"] for r in plain.history], rel=1e-6)
    assert not ckpt.model.is_gradient_checkpointing
