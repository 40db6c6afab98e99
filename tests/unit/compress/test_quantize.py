"""ONNX export + INT8: parity with torch, size, agreement; the real SmolLM2 path in a slow test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tinymodels import tiny_turns, write_tiny_causal_lm

from chatforge.compress.onnx_export import ExportError, export_causal_lm, load_for_export
from chatforge.compress.quantize import QuantizeOptions, build_onnx_folder, quantize_onnx, top1_agreement
from chatforge.modeling.distill import CompressError
from chatforge.modeling.generate import GenerationConfig, load_generator
from chatforge.params import QuantizeParams

torch.set_num_threads(1)
PROMPTS = [[{"role": "user", "content": "查询北京天气"}], [{"role": "user", "content": "please reset my password"}],
           [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "明天上海会下雨吗"}]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("quant")
    source = write_tiny_causal_lm(root / "pruned", hidden=256, intermediate=768)
    metrics = build_onnx_folder(source, root / "onnx", tiny_turns(12),
                                params=QuantizeParams(eval_max_conversations=6, max_new_tokens=8))
    return source, root / "onnx", metrics


def test_onnx_float_greedy_equals_torch_greedy(built: tuple[Path, Path, dict]) -> None:
    source, folder, metrics = built
    torch_gen, onnx_gen = load_generator(source, backend="torch"), load_generator(folder, backend="onnx")
    for prompt in PROMPTS:
        cfg = GenerationConfig(max_new_tokens=20)
        assert torch_gen.generate(prompt, cfg).token_ids == onnx_gen.generate(prompt, cfg).token_ids
    assert metrics["greedy_equal_rate_onnx_vs_torch"] == 1.0


def test_int8_is_small_and_agrees_with_float(built: tuple[Path, Path, dict]) -> None:
    _, folder, m = built
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    onnx.checker.check_model(str(folder / "model.int8.onnx"), full_check=True)
    assert m["size_ratio"] == pytest.approx((folder / "model.int8.onnx").stat().st_size / (folder / "model.onnx").stat().st_size)
    assert m["size_ratio"] <= 0.30
    assert m["tied_embedding_shared"] is True
    assert 0.95 <= m["top1_agreement"] <= 1.0
    assert m["teacher_forced_sequences"] == 6 and 0.0 <= m["greedy_equal_rate_int8_vs_float"] <= 1.0
    assert {"bleu_float", "bleu_int8"} <= m.keys()
    manifest = json.loads((folder / "chatforge.json").read_text())
    assert manifest["variant"] == "int8" and manifest["family"] == "causal_lm"
    assert load_generator(folder).fingerprint.startswith("onnx_int8:")  # auto picks the INT8 file


def test_tied_embedding_is_stored_once(built: tuple[Path, Path, dict]) -> None:
    _, folder, _ = built
    for name in ("model.onnx", "model.int8.onnx"):
        model = onnx.load(str(folder / name))
        # vocab x hidden (400 x 256) tables; scales and zero points are 1/32 of that
        tables = [i for i in model.graph.initializer if 400 in i.dims and np.prod(i.dims) >= 400 * 256]
        assert len(tables) == 1, name


def test_naive_dynamic_scheme_is_measurably_worse_or_equal(built: tuple[Path, Path, dict], tmp_path: Path) -> None:
    _source, folder, m = built
    out = tmp_path / "dyn.onnx"
    quantize_onnx(folder / "model.onnx", out, options=QuantizeOptions(scheme="dynamic"))
    from transformers import AutoTokenizer

    from chatforge.modeling.data import conversations, tokenize_conversations

    tok = AutoTokenizer.from_pretrained(folder)
    seqs = [e.input_ids for e in tokenize_conversations(conversations(tiny_turns(6)), tok, max_seq_len=256, overlong="truncate")[0]]
    assert top1_agreement(folder / "model.onnx", out, seqs) <= m["top1_agreement"]


def test_classifier_quantize_reports_accuracy_drop(tiny_classifier: Path, tmp_path: Path) -> None:
    m = build_onnx_folder(tiny_classifier, tmp_path / "onnx", tiny_turns(9), params=QuantizeParams())
    assert m["family"] == "classifier" and m["test_conversations"] == 9
    assert m["accuracy_drop"] == pytest.approx(m["accuracy_float"] - m["accuracy_int8"])
    assert (tmp_path / "onnx" / "responses.json").exists()


def test_unsupported_architecture_names_the_key(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from chatforge.modeling.manifest import Manifest, write_manifest

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant="teacher"))
    with pytest.raises(ExportError, match="quantize.source: architecture 'GPT2LMHeadModel' is not supported"):
        load_for_export(folder)
    with pytest.raises(ExportError, match="quantize.source"):
        export_causal_lm(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)), tmp_path / "m.onnx")


def test_missing_source_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="quantize.source: model folder .* does not exist"):
        build_onnx_folder(tmp_path / "missing", tmp_path / "out", tiny_turns(3), params=QuantizeParams())


@pytest.mark.slow
def test_real_smollm2_onnx_parity_and_int8(tmp_path: Path) -> None:
    """The pip-shipped SmolLM2-135M-Instruct: ONNX float greedy == torch greedy; INT8 keeps top-1 agreement."""
    from chatforge.modeling.base import _load_smollm2
    from chatforge.modeling.manifest import Manifest, write_manifest

    base = _load_smollm2()
    folder = tmp_path / "smol"
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant="base"))
    del base
    turns = tiny_turns(12)
    m = build_onnx_folder(folder, tmp_path / "onnx", turns, params=QuantizeParams(eval_max_conversations=6, max_new_tokens=16))
    assert m["greedy_equal_rate_onnx_vs_torch"] == 1.0
    assert m["size_ratio"] <= 0.30 and m["tied_embedding_shared"]
    assert m["top1_agreement"] >= 0.95
    shutil.rmtree(tmp_path / "onnx")
