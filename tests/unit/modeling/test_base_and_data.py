"""Base resolution (bad input first), the scratch tokenizer, chat formatting and packing."""

from __future__ import annotations

import pytest
import torch
import trainkit as tk

from chatforge.modeling.base import BaseModelError, check_base, resolve_base
from chatforge.modeling.data import collate_packed, length_groups, pack
from chatforge.modeling.tokenizer import train_bpe_tokenizer
from chatforge.params import ModelParams, ParamsError, validate_section
from chatforge.runtime.conversation import (
    IGNORE,
    Conversation,
    conversations,
    tokenize_chat,
    tokenize_conversations,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------- bad input
def test_base_folder_that_does_not_exist_names_the_key(tmp_path):
    with pytest.raises(BaseModelError, match=r"model\.base = '.*/nope': no such folder"):
        check_base(ModelParams(base=str(tmp_path / "nope")))


def test_hub_id_offline_and_not_cached_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match=r"model\.base = 'someone/not-a-real-model-xyz'.*could not be loaded.*local folder"):
        check_base(ModelParams(base="someone/not-a-real-model-xyz"))


def test_family_base_mismatch_is_a_params_error():
    with pytest.raises(ParamsError, match=r"base 'minilm-l6' is a classifier model but family is 'causal_lm'"):
        validate_section("model", {"family": "causal_lm", "base": "minilm-l6"}, ModelParams)
    with pytest.raises(ParamsError, match=r"base 'smollm2-135m-instruct' is a causal_lm model"):
        validate_section("model", {"family": "classifier", "base": "smollm2-135m-instruct"}, ModelParams)


def test_folder_of_the_wrong_family_is_rejected(tmp_path):
    folder = tk.build_base(tmp_path, tk.scratch_params("classifier"), tk.turns(12))
    with pytest.raises(BaseModelError, match="is an encoder \\('bert'\\) and cannot generate text"):
        check_base(ModelParams(family="causal_lm", base=str(folder)))
    folder = tk.build_base(tmp_path, tk.scratch_params("causal_lm"), tk.turns(12))
    with pytest.raises(BaseModelError, match="is a 'llama' model, not an encoder"):
        check_base(ModelParams(family="classifier", base=str(folder)))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(BaseModelError, match="no config.json"):
        check_base(ModelParams(base=str(tmp_path)))


def test_scratch_sizes_are_validated():
    with pytest.raises(ParamsError, match=r"hidden \(100\) must be a multiple of heads \(8\)"):
        validate_section("model", {"base": "scratch", "scratch": {"hidden": 100, "heads": 8}}, ModelParams)
    with pytest.raises(ParamsError, match=r"model\.scratch\.layers = 0"):
        validate_section("model", {"base": "scratch", "scratch": {"layers": 0}}, ModelParams)
    assert validate_section("model", {"base": "scratch", "scratch": {"layers": "3"}}, ModelParams).scratch.layers == 3


def test_scratch_with_empty_corpus_is_a_clear_error():
    with pytest.raises(BaseModelError, match="corpus is empty"):
        resolve_base(tk.scratch_params(), corpus=[])


# ------------------------------------------------------------------------------- scratch
def test_scratch_bases_for_both_families_load_back(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    for family, auto, model_type in (("causal_lm", AutoModelForCausalLM, "llama"), ("classifier", AutoModel, "bert")):
        folder = tk.build_base(tmp_path, tk.scratch_params(family), tk.turns(30))
        model = auto.from_pretrained(folder)
        assert model.config.model_type == model_type and model.config.num_hidden_layers == 2
        assert model.config.hidden_size == 64
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok.decode(tok("查询北京天气 42", add_special_tokens=False)["input_ids"]) == "查询北京天气 42"
    distil = tk.build_base(tmp_path, tk.scratch_params("classifier", encoder="distilbert"), tk.turns(30))
    assert AutoModel.from_pretrained(distil).config.model_type == "distilbert"


def test_scratch_tokenizer_keeps_cjk_characters_apart_and_splits_digits():
    tok = train_bpe_tokenizer(["北京天气晴朗 2024"] * 50 + ["weather in Beijing"] * 50, vocab_size=400, min_frequency=1)
    pieces = [tok.convert_tokens_to_string([t]) for t in tok.tokenize("北京天气 2024")]
    assert "北京" not in pieces and "北" in pieces and "京" in pieces  # merges never join two characters
    assert [p for p in pieces if p.strip().isdigit()] == ["2", "0", "2", "4"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # trained on a set of texts: order and repeats of the corpus do not change it
    again = train_bpe_tokenizer(["weather in Beijing"] * 3 + ["北京天气晴朗 2024"], vocab_size=400, min_frequency=1)
    assert again.get_vocab() == tok.get_vocab()


# ------------------------------------------------------------------------------- chat data
@pytest.fixture(scope="module")
def chat_tok():
    return train_bpe_tokenizer(tk.turns(60)["content"].to_list(), vocab_size=400, min_frequency=1)


def test_labels_cover_exactly_the_assistant_messages(chat_tok):
    conv = Conversation("c1", "zh", "weather", [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "查询北京天气"},
        {"role": "assistant", "content": "今日北京晴"}, {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "You are welcome"},
    ])
    ex = tokenize_chat(chat_tok, conv)
    learnt = chat_tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])
    assert learnt == "今日北京晴<|im_end|>You are welcome<|im_end|>"  # the newline after an end token is the template's
    assert all(lab in (IGNORE, t) for t, lab in zip(ex.input_ids, ex.labels, strict=True))


def test_conversation_without_assistant_is_dropped_and_counted(chat_tok):
    convs = [Conversation("a", "en", None, [{"role": "user", "content": "hello"}]),
             Conversation("b", "en", None, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}])]
    examples, stats = tokenize_conversations(convs, chat_tok, max_seq_len=64, overlong="truncate")
    assert [e.conversation_id for e in examples] == ["b"] and stats.dropped_no_assistant == 1


def test_conversations_groups_turns_in_order():
    frame = tk.turns(6).sample(fraction=1.0, shuffle=True, seed=1)
    convs = conversations(frame)
    assert [c.conversation_id for c in convs] == [f"c{i:04d}" for i in range(6)]
    assert [m["role"] for m in convs[0].messages] == ["user", "assistant", "user", "assistant"]


def test_packing_fills_rows_without_splitting_conversations(chat_tok):
    examples, _ = tokenize_conversations(conversations(tk.turns(40)), chat_tok, max_seq_len=64, overlong="truncate")
    rows = pack(examples, max_seq_len=256)
    assert sorted(e.conversation_id for r in rows for e in r) == sorted(e.conversation_id for e in examples)
    assert all(sum(len(e.input_ids) for e in r) <= 256 for r in rows)
    assert len(rows) < len(examples) / 2  # several conversations share a row
    batch = collate_packed(rows[:3], pad_id=chat_tok.pad_token_id)
    assert int(batch["num_tokens"]) == sum(len(e.input_ids) for r in rows[:3] for e in r)
    first = rows[0]
    starts = [0]
    for e in first[:-1]:
        starts.append(starts[-1] + len(e.input_ids))
    assert all(int(batch["position_ids"][0, s]) == 0 for s in starts)


def test_packed_rows_attend_only_within_their_conversation(tmp_path):
    """Logits of a packed row equal each conversation's logits computed alone (sdpa and eager)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tk.build_base(tmp_path, tk.scratch_params(), tk.turns(30))
    tok = AutoTokenizer.from_pretrained(folder)
    examples, _ = tokenize_conversations(conversations(tk.turns(6)), tok, max_seq_len=128, overlong="truncate")
    rows = pack(examples, max_seq_len=200)
    assert len(rows[0]) >= 2
    batch = collate_packed(rows[:1], pad_id=tok.pad_token_id)
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn).eval()
        with torch.no_grad():
            # as the training loop calls it: no attention mask and no cache (a cache turns the
            # packed-sequence detection off, and then rows would leak into each other)
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
            offset = 0
            for e in rows[0]:
                alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
                torch.testing.assert_close(packed[offset : offset + len(e.input_ids)], alone, atol=1e-5, rtol=1e-4)
                offset += len(e.input_ids)


def test_length_groups_are_deterministic_and_cover_everything(chat_tok):
    examples, _ = tokenize_conversations(conversations(tk.turns(40)), chat_tok, max_seq_len=64, overlong="truncate")
    a = length_groups(examples, batch_size=4, seed=3)
    b = length_groups(examples, batch_size=4, seed=3)
    assert [[e.conversation_id for e in g] for g in a] == [[e.conversation_id for e in g] for g in b]
    assert sorted(e.conversation_id for g in a for e in g) == sorted(e.conversation_id for e in examples)
