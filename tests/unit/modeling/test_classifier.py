"""The classifier family on tiny BERT, DistilBERT and ALBERT configs; responses; calibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trainkit as tk

from chatforge.modeling import classifier as clf
from chatforge.modeling.tokenizer import train_bpe_tokenizer
from chatforge.modeling.train import train
from chatforge.runtime.conversation import conversations
from chatforge.runtime.folder import Manifest, write_manifest

torch.set_num_threads(1)


def _encoder_folder(tmp: Path, arch: str, corpus: list[str]) -> Path:
    from transformers import (
        AlbertConfig,
        AlbertModel,
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
    )

    tok = train_bpe_tokenizer(corpus, vocab_size=400, min_frequency=1, kind="classifier", model_max_length=128)
    v, pad = len(tok), tok.pad_token_id
    torch.manual_seed(0)
    model = {
        "bert": lambda: BertModel(BertConfig(vocab_size=v, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=128, max_position_embeddings=128, pad_token_id=pad)),
        "distilbert": lambda: DistilBertModel(DistilBertConfig(vocab_size=v, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                               max_position_embeddings=128, pad_token_id=pad)),
        "albert": lambda: AlbertModel(AlbertConfig(vocab_size=v, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                                                   pad_token_id=pad)),
    }[arch]()
    folder = tmp / arch
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    write_manifest(folder, Manifest(family="classifier", variant="base", base=str(folder)))
    return folder


@pytest.mark.parametrize("arch", ["bert", "distilbert", "albert"])
def test_classifier_learns_intents_on_tiny_encoders(tmp_path, arch):
    from transformers import AutoModelForSequenceClassification

    train_turns, val_turns = tk.turns(60), tk.turns(18, seed=1, prefix="v")
    base = _encoder_folder(tmp_path, arch, train_turns["content"].to_list())
    mp = tk.scratch_params("classifier").model_copy(update={"base": str(base)})
    out = train(model_params=mp, train_params=tk.tparams(lr=5e-3, max_steps=40, eval_every_steps=10, batch_size=8),
                base_dir=base, train_turns=train_turns, val_turns=val_turns)
    assert out.model.config.id2label == {0: "greeting", 1: "order", 2: "weather"}
    evals = [r for r in out.history if "val/loss" in r]
    assert evals[-1]["val/loss"] < evals[0]["val/loss"]  # it learns ...
    assert out.metrics["val_accuracy"] >= 0.6  # ... well above chance (1/3) in 40 tiny steps
    assert out.details["calibration_temperature"] > 0
    assert out.metrics["ece_after"] <= out.metrics["ece_before"] + 1e-6
    out.model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert reloaded.config.model_type == arch


def test_learn_responses_takes_the_most_frequent_first_answer_per_language():
    convs = conversations(tk.turns(30))
    responses = clf.learn_responses(convs)
    assert responses["greeting"] == {"en": "Hello! How can I help you?", "zh": "你好！有什么可以帮您？"}
    assert responses["order"]["zh"] == "您的订单正在配送中。"
    assert set(responses["weather"]) == {"en", "zh"}


def test_classifier_examples_count_rows_without_intent():
    import polars as pl

    turns = tk.turns(12).with_columns(
        pl.when(pl.col("conversation_id") == "c0000").then(None).otherwise(pl.col("intent")).alias("intent")
    )
    tok = train_bpe_tokenizer(turns["content"].to_list(), vocab_size=300, kind="classifier")
    ex, stats = clf.classifier_examples(conversations(turns), tok, labels=["greeting", "order", "weather"],
                                        mode="all_user", max_seq_len=8)
    assert len(ex) == 11 and stats.extra["no_intent"] == 1
    assert all(len(e.input_ids) <= 8 and e.input_ids[0] == tok.cls_token_id and e.input_ids[-1] == tok.sep_token_id for e in ex)
    assert stats.truncated > 0


def test_temperature_scaling_fixes_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (400,))
    clean = torch.nn.functional.one_hot(labels, 4).float() * 2.0 + torch.randn(400, 4)
    logits = clean * 8  # the same ranking, wildly overconfident
    t = clf.fit_temperature(logits, labels)
    assert t == pytest.approx(8 * clf.fit_temperature(clean, labels), rel=1e-3)  # scaling logits scales T
    assert t > 1  # overconfident logits are softened
    before = clf.expected_calibration_error(logits.softmax(-1), labels)
    after = clf.expected_calibration_error((logits / t).softmax(-1), labels)
    assert after < before / 2
