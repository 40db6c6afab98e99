"""GGUF export (chatforge.compress.gguf_export, `chatforge export`): tiny models written, read back
with transformers' own GGUF loader and gguf.GGUFReader, answers compared token for token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from gguf import GGMLQuantizationType, GGUFReader
from tinymodels import TINY_CORPUS, write_tiny_causal_lm
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.compress.gguf_export import (
    GgufExportError,
    export_gguf,
    greedy_answer_ids,
    ollama_template,
    permute_rotary,
    plan_export,
    render_chat_template,
    token_agreement,
)
from chatforge.io import sha256_tree
from chatforge.modeling.tokenizer import train_bpe_tokenizer
from chatforge.runtime.folder import ModelFolderError

CONVERSATIONS = [
    [{"role": "user", "content": "查询北京天气"}],
    [{"role": "user", "content": "book a flight to Shanghai please"}],
    [{"role": "user", "content": "我想订一张去广州的机票"}],
    [{"role": "user", "content": "hello, how can I help you?"}],
    [{"role": "system", "content": "You are a precise assistant."}, {"role": "user", "content": "please reset my password"}],
    [{"role": "user", "content": "明天上海会下雨吗"}, {"role": "assistant", "content": "今日北京晴，15-25℃"},
     {"role": "user", "content": "谢谢，再见"}],
]
MAX_NEW_TOKENS = 24

TINY_MODELFILE = '''# Ollama Modelfile written by `chatforge export`: `ollama create NAME -f Modelfile`, then `ollama run NAME`.
FROM ./tiny-q8_0.gguf
# FROM ./tiny-f16.gguf
TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
PARAMETER stop "<|im_end|>"
PARAMETER stop "<|im_start|>"
PARAMETER stop "<|endoftext|>"
PARAMETER temperature 0.7
PARAMETER top_p 0.9
PARAMETER num_predict 128
PARAMETER num_ctx 512
'''


def load_gguf(folder: Path, name: str):
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def tensor(reader: GGUFReader, name: str):
    return next(t for t in reader.tensors if t.name == name)


def save_llama(folder: Path, tokenizer, *, tie: bool, intermediate: int = 128, seed: int = 1) -> Path:
    return write_tiny_causal_lm(folder, tokenizer=tokenizer, tie=tie, intermediate=intermediate, seed=seed,
                                max_positions=256)


@pytest.fixture(scope="module")
def exported(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "out"
    result = CliRunner().invoke(app, ["export", str(tiny_causal_lm), str(out), "--type", "f16", "--type", "q8_0",
                                      "--name", "tiny", "--params", str(out / "absent.yaml"),
                                      "--reports", str(out / "no-reports")])
    assert result.exit_code == 0, result.output
    return out


def test_token_agreement_counts_positions_over_the_longer_answer() -> None:
    assert token_agreement([[1, 2, 3], [7]], [[1, 2, 4, 5], [7]]) == 3 / 5
    assert token_agreement([[1, 2]], [[1, 2]]) == 1.0
    assert token_agreement([[]], [[9]]) == 0.0
    with pytest.raises(ValueError, match="2 reference answers but 1"):
        token_agreement([[1], [2]], [[1]])
    with pytest.raises(ValueError, match="every answer is empty"):
        token_agreement([[]], [[]])


def test_greedy_answers_match_the_source_model(tiny_causal_lm: Path, exported: Path) -> None:
    source = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()
    source_tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    reference = [greedy_answer_ids(source, source_tok, c, MAX_NEW_TOKENS) for c in CONVERSATIONS]
    scores = {}
    for kind in ("f16", "q8_0"):
        model, tok = load_gguf(exported, f"tiny-{kind}.gguf")
        for c in CONVERSATIONS:  # the prompt reaches the model as the same ids
            assert tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False) == \
                source_tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False)
        scores[kind] = token_agreement(reference, [greedy_answer_ids(model, tok, c, MAX_NEW_TOKENS) for c in CONVERSATIONS])
    print(f"tiny greedy token agreement: f16 {scores['f16']:.3f}, q8_0 {scores['q8_0']:.3f}")
    assert scores["f16"] >= 0.95
    assert scores["q8_0"] >= 0.8


def test_tensors_types_and_rotary_layout(tiny_causal_lm: Path, exported: Path) -> None:
    source = LlamaForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    f16, q8 = GGUFReader(exported / "tiny-f16.gguf"), GGUFReader(exported / "tiny-q8_0.gguf")
    names = {t.name for t in f16.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert len(names) == 2 + 9 * 2  # token_embd, output_norm, 9 per block
    assert tensor(f16, "token_embd.weight").tensor_type == GGMLQuantizationType.F16
    assert tensor(f16, "blk.0.attn_norm.weight").tensor_type == GGMLQuantizationType.F32
    assert tensor(q8, "blk.1.ffn_down.weight").tensor_type == GGMLQuantizationType.Q8_0
    assert tensor(q8, "output_norm.weight").tensor_type == GGMLQuantizationType.F32
    # q/k are stored in llama.cpp's interleaved RoPE layout, v is not permuted
    q = source.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    k = source.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    v = source.model.layers[0].self_attn.v_proj.weight.detach().numpy()
    stored = {n: np.asarray(tensor(f16, f"blk.0.{n}.weight").data, dtype=np.float32) for n in ("attn_q", "attn_k", "attn_v")}
    np.testing.assert_allclose(stored["attn_q"], permute_rotary(q, 4, 4), atol=1e-3)
    np.testing.assert_allclose(stored["attn_k"], permute_rotary(k, 4, 2), atol=1e-3)
    np.testing.assert_allclose(stored["attn_v"], v, atol=1e-3)
    assert not np.allclose(stored["attn_q"], q, atol=1e-3)
    # and transformers' loader undoes it
    back = AutoModelForCausalLM.from_pretrained(exported, gguf_file="tiny-f16.gguf", dtype=torch.float32)
    np.testing.assert_allclose(back.model.layers[0].self_attn.k_proj.weight.detach().numpy(), k, atol=1e-3)
    assert back.config.tie_word_embeddings is True


def test_tokenizer_metadata_and_embedded_template(tiny_causal_lm: Path, exported: Path) -> None:
    source_tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    reader = GGUFReader(exported / "tiny-q8_0.gguf")
    field = lambda key: reader.fields[key].contents()
    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2"
    vocab = source_tok.get_vocab()
    assert field("tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get)
    types = field("tokenizer.ggml.token_type")
    assert [types[vocab[t]] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [3, 3, 3]  # CONTROL
    assert types[vocab["a"]] == 1
    assert field("tokenizer.ggml.eos_token_id") == source_tok.eos_token_id
    assert field("tokenizer.ggml.padding_token_id") == source_tok.pad_token_id
    assert "tokenizer.ggml.bos_token_id" not in reader.fields
    assert field("tokenizer.ggml.add_bos_token") is False
    assert len(field("tokenizer.ggml.merges")) == len(json.loads(source_tok.backend_tokenizer.to_str())["model"]["merges"])
    embedded = field("tokenizer.chat_template")
    assert embedded == source_tok.chat_template
    gguf_tok = AutoTokenizer.from_pretrained(exported, gguf_file="tiny-q8_0.gguf")
    for conversation in CONVERSATIONS:
        for generation in (True, False):
            training = source_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation)
            assert render_chat_template(embedded, conversation, add_generation_prompt=generation) == training
            assert gguf_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation) == training


def test_modelfile_and_model_card(exported: Path) -> None:
    assert (exported / "Modelfile").read_text(encoding="utf-8") == TINY_MODELFILE
    card = (exported / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "apache-2.0"
    assert front["language"] == ["zh", "en"]
    assert {"chatforge", "gguf", "ollama", "teacher"} <= set(front["tags"])
    assert "base_model" not in front  # a tiny/scratch model has no hub parent
    assert "| tiny-q8_0.gguf | q8_0 |" in card and "| tiny-f16.gguf | f16 |" in card
    assert "No pipeline reports were found" in card


def test_model_card_reads_reports_and_persona(tiny_causal_lm: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "ingest.json").write_text(json.dumps({"conversations": 12, "conversations_by_lang": {"zh": 7, "en": 5}}))
    (reports / "split.json").write_text(json.dumps({"conversations": {"train": 8, "val": 2, "test": 2}}))
    (reports / "evaluate.json").write_text(json.dumps({"teacher": {"bleu": 61.25, "chrf": 70.0, "params": 1},
                                                       "student": {"bleu": 1.0},
                                                       "models": {"teacher": {"sha256": sha256_tree(tiny_causal_lm)}}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"serve": {"personas": {"calm": {"temperature": 0.8, "top_p": 0.9,
                                                                      "system_prompt": "Be calm."}},
                                                "limits": {"default_max_tokens": 64},
                                                "variants": [{"name": "teacher", "model": "models/teacher"}]}}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(tiny_causal_lm), str(out), "--persona", "calm",
                                      "--params", str(params), "--reports", str(reports)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "chatforge-teacher-q8_0.gguf"]
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert 'SYSTEM """Be calm."""\n' in modelfile
    assert "PARAMETER temperature 0.8\nPARAMETER top_p 0.9\nPARAMETER num_predict 64\n" in modelfile
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| conversations read | 12 (en: 5, zh: 7) |" in card
    assert "| train / val / test conversations | 8 / 2 / 2 |" in card
    assert "| BLEU (all) | 61.25 |" in card and "| chrF | 70 |" in card
    assert "Slot placeholders" not in card and "slot placeholders" not in result.output  # no slots in this model
    # no retrieval row in evaluate.json: how the model does alone is not measured, and export says so
    assert "how the exported model answers on its own is not measured" in result.output


def test_a_model_with_slot_placeholders_says_what_llama_cpp_loses(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """The card puts the served scores beside the raw-prompt ones (evaluate's raw_*), and export warns."""
    from chatforge.runtime import slots

    folder = tmp_path / "slotted"
    shutil.copytree(tiny_causal_lm, folder)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    slots.enable(tokenizer, slots.slot_config(["number"], max_per_kind=2, gazetteer={}))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "evaluate.json").write_text(json.dumps({"teacher": {
        "bleu_zh": 71.76, "bleu_en": 66.43, "slot_carry": 1.0, "raw_bleu_zh": 40.21, "raw_bleu_en": 40.03,
        "raw_slot_carry": 0.0}, "retrieval": {"bleu_zh": 65.6, "bleu_en": 39.0},
        "models": {"teacher": {"sha256": sha256_tree(folder)}}}))
    out = tmp_path / "out"
    args = ["export", str(folder), str(out), "--reports", str(reports), "--params", str(tmp_path / "none.yaml")]
    # alone (as llama.cpp runs it) the model is below retrieval in zh: refused, saying by how much
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert ("answers worse on its own than the retrieval baseline (BLEU zh 40.2 on its own against retrieval's 65.6;"
            in " ".join(refused.output.split()))
    assert not out.exists() and "Traceback" not in refused.output
    result = CliRunner().invoke(app, [*args, "--allow-below-retrieval"])
    assert result.exit_code == 0, result.output
    assert ("was trained with slot placeholders, which llama.cpp and Ollama do not apply, so there it answers "
            "worse: on the test split BLEU 40.2 zh / 40.0 en, slot carry 0.00 (served: 71.8 / 66.4, 1.00)") in result.output
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| metric | chatforge serve | llama.cpp / Ollama (messages as written) |" in card
    assert "| BLEU zh | 71.76 | 40.21 |\n| BLEU en | 66.43 | 40.03 |\n| slot carry | 1 | 0 |" in card
    assert ("(measured: BLEU 40.2 zh / 40.0 en and slot carry 0.00, against 71.8 / 66.4 and 1.00 served)"
            in " ".join(card.split()))


def test_numbers_of_another_folder_under_the_same_variant_name_are_not_used(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """evaluate.json's `teacher` row is about the folder evaluate hashed; another folder that calls
    itself teacher (another build, a pip base, weights changed since) is neither refused nor carded
    with those numbers: export says they are not measured for it."""
    folder = tmp_path / "other"
    shutil.copytree(tiny_causal_lm, folder)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "evaluate.json").write_text(json.dumps({
        "teacher": {"bleu": 12.5, "bleu_zh": 0.0, "bleu_en": 0.0, "model_bleu_zh": 0.0, "model_bleu_en": 0.0},
        "retrieval": {"bleu_zh": 65.6, "bleu_en": 61.9}, "models": {"teacher": {"sha256": sha256_tree(folder)}}}))
    args = ["export", str(folder), str(tmp_path / "out"), "--reports", str(reports), "--params", str(tmp_path / "none.yaml")]
    assert CliRunner().invoke(app, args).exit_code == 2  # the measured folder, below retrieval alone: refused
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7}))  # now another folder
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "has no scores for this 'teacher' folder (its hash is not the one evaluate measured" in " ".join(result.output.split())
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "12.5" not in card and "No evaluation of variant `teacher` was found" in card


def test_untied_head_and_q8_0_fallback(tmp_path: Path) -> None:
    from tinymodels import build_tiny_tokenizer

    # untied lm_head, and an MLP width (136) that is not a multiple of Q8_0's 32-value block
    folder = save_llama(tmp_path / "untied", build_tiny_tokenizer(), tie=False, intermediate=136)
    result = export_gguf(folder, tmp_path / "out" / "u-q8_0.gguf", gguf_type="q8_0")
    assert result.f16_fallback == ("blk.0.ffn_down.weight", "blk.1.ffn_down.weight")
    reader = GGUFReader(result.path)
    assert tensor(reader, "output.weight").tensor_type == GGMLQuantizationType.Q8_0
    assert tensor(reader, "blk.0.ffn_down.weight").tensor_type == GGMLQuantizationType.F16
    export_gguf(folder, tmp_path / "out" / "u-f16.gguf", gguf_type="f16")
    source = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    reference = [greedy_answer_ids(source, tok, c, MAX_NEW_TOKENS) for c in CONVERSATIONS]
    scores = {}
    for kind in ("f16", "q8_0"):
        back, _ = load_gguf(tmp_path / "out", f"u-{kind}.gguf")
        assert back.config.tie_word_embeddings is False
        head, embed = back.lm_head.weight.detach(), back.model.embed_tokens.weight.detach()
        assert not torch.equal(head, embed)
        torch.testing.assert_close(head, source.lm_head.weight.detach(), atol=2e-3, rtol=0)
        scores[kind] = token_agreement(reference, [greedy_answer_ids(back, tok, c, MAX_NEW_TOKENS) for c in CONVERSATIONS])
    # a random-init model has nearly flat logits, so Q8_0 rounding flips some near-ties; f16 must not
    print(f"untied greedy token agreement: f16 {scores['f16']:.3f}, q8_0 {scores['q8_0']:.3f}")
    assert scores["f16"] >= 0.95
    assert scores["q8_0"] >= 0.5


def test_scratch_tokenizer_with_slot_tokens_round_trips(tmp_path: Path) -> None:
    # chatforge's scratch tokenizer (CJK split + single digits + byte level) and a slot placeholder
    tokenizer = train_bpe_tokenizer(TINY_CORPUS * 2, vocab_size=400, min_frequency=1)
    tokenizer.add_tokens(["<city_1>"])
    folder = save_llama(tmp_path / "scratch", tokenizer, tie=True)
    export_gguf(folder, tmp_path / "out" / "s-f16.gguf", gguf_type="f16")
    reader = GGUFReader(tmp_path / "out" / "s-f16.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[tokenizer.convert_tokens_to_ids("<city_1>")] == 4  # USER_DEFINED
    back = AutoTokenizer.from_pretrained(tmp_path / "out", gguf_file="s-f16.gguf")
    for text in ["查询北京天气，订单号 20240518 到 <city_1> 吗？", "Order #K71236 ships to <city_1> on 2024-05-18.",
                 "今日北京晴，15-25℃", " leading  spaces\nand lines\t"]:
        assert back(text)["input_ids"] == tokenizer(text)["input_ids"], text
        assert back.decode(back(text)["input_ids"]) == text


def test_ollama_template_default_system_and_refusals() -> None:
    smollm_like = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    template, system = ollama_template(smollm_like)
    assert system == "You are helpful." and template.startswith("{{- range .Messages }}")
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ m['content'] }}<|eot_id|>{% endfor %}"
    with pytest.raises(GgufExportError, match="not ChatML"):
        ollama_template(llama3)
    with pytest.raises(GgufExportError, match="no chat template"):
        ollama_template(None)


@pytest.mark.parametrize("case", ["missing", "classifier", "onnx_only", "gpt2", "bad_type"])
def test_bad_input_is_a_clear_error(case: str, tiny_causal_lm: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    folder = {"missing": tmp_path / "nope", "classifier": tiny_classifier}.get(case, tmp_path / case)
    expected = {
        "missing": "does not exist", "classifier": "not a causal LM", "onnx_only": "holds an ONNX export",
        "gpt2": "architecture 'GPT2LMHeadModel' is not supported", "bad_type": "--type 'q4_k'",
    }[case]
    if case in ("onnx_only", "gpt2", "bad_type"):
        shutil.copytree(tiny_causal_lm, folder)
    if case == "onnx_only":
        (folder / "model.safetensors").unlink()
        (folder / "model.onnx").write_bytes(b"onnx")
    if case == "gpt2":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    args = ["export", str(folder), str(tmp_path / "out"), "--params", str(tmp_path / "absent.yaml")]
    result = CliRunner().invoke(app, [*args, "--type", "q4_k" if case == "bad_type" else "f16"])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)  # typer.Exit(2), not a crash
    assert not (tmp_path / "out").exists()  # nothing half-written
    if case in ("missing", "classifier"):
        with pytest.raises(ModelFolderError if case == "missing" else GgufExportError):
            plan_export(folder)
