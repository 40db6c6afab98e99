"""The real pip-shipped bases through `resolve_base` (as the base stage saves them) and a few
training steps on each. Slow: SmolLM2 is dequantised from GGUF (~20 s) and is 135M parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trainkit as tk
from test_labels import GREETING_FIRST, learnt_runs

from chatforge.modeling.base import describe, resolve_base
from chatforge.modeling.train import train
from chatforge.params import ModelParams
from chatforge.runtime.conversation import tokenize_chat
from chatforge.runtime.folder import Manifest, write_manifest

pytestmark = pytest.mark.slow


def _save(tmp: Path, mp: ModelParams) -> Path:
    base = resolve_base(mp)
    folder = tmp / mp.base
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family=mp.family, variant="base", parent=base.parent, base=mp.base))
    return folder


def test_smollm2_resolves_to_a_plain_folder_and_trains(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    mp = ModelParams(family="causal_lm", base="smollm2-135m-instruct")
    folder = _save(tmp_path, mp)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    info = describe(reloaded)
    assert info["parameters"] == 134_515_008 and info["layers"] == 30 and info["vocab_size"] == 49152
    tok = __import__("transformers").AutoTokenizer.from_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")  # ChatML kept
    # its template injects a default system prompt before a chat that opens with the assistant: never a target
    ex = tokenize_chat(tok, GREETING_FIRST)
    assert "named SmolLM" in tok.decode(ex.input_ids)
    assert learnt_runs(tok, ex) == ["您好，欢迎光临，请问有什么可以帮您？<|im_end|>", "今日北京晴<|im_end|>"]
    head_before = reloaded.model.layers[29].mlp.down_proj.weight.clone()
    out = train(
        model_params=mp,
        train_params=tk.tparams(lr=1e-4, batch_size=2, max_steps=2, max_seq_len=96, eval_every_steps=2,
                                eval_max_conversations=4, bleu_samples=2, bleu_max_new_tokens=8, freeze="bottom",
                                freeze_layers=28),
        base_dir=folder, train_turns=tk.turns(12), val_turns=tk.turns(4, seed=1, prefix="v"),
    )
    assert out.metrics["steps"] == 2 and out.metrics["val_perplexity"] > 1
    assert not torch.equal(out.model.model.layers[29].mlp.down_proj.weight, head_before)
    assert torch.equal(out.model.model.layers[0].mlp.down_proj.weight, reloaded.model.layers[0].mlp.down_proj.weight)


def test_minilm_resolves_and_trains_a_classifier(tmp_path):
    torch.set_num_threads(2)
    mp = ModelParams(family="classifier", base="minilm-l6")
    folder = _save(tmp_path, mp)
    out = train(
        model_params=mp, train_params=tk.tparams(lr=5e-4, batch_size=8, max_steps=6, eval_every_steps=3),
        base_dir=folder, train_turns=tk.turns(48), val_turns=tk.turns(12, seed=1, prefix="v"),
    )
    assert out.model.config.model_type == "bert" and out.model.config.num_hidden_layers == 6
    assert out.metrics["steps"] == 6 and out.details["calibration_temperature"] > 0
    assert set(out.responses) == {"greeting", "order", "weather"}
