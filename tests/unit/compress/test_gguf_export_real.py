"""GGUF export of a real model (slow): the pip-shipped SmolLM2-135M-Instruct base. Greedy answers to
demo-corpus prompts (zh and en) from the exported f16 / Q8_0 files, loaded back by transformers, are
compared with the source model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.compress.gguf_export import greedy_answer_ids, token_agreement

ROOT = Path(__file__).resolve().parents[3]
PROMPTS_PER_LANG = 5
MAX_NEW_TOKENS = 32

pytestmark = pytest.mark.slow


def demo_prompts() -> list[str]:
    """The first user message of the first conversations of each language in the shipped demo corpus."""
    data = json.loads((ROOT / "data/raw/demo/conversations.json").read_text(encoding="utf-8"))
    picked: dict[str, list[str]] = {"zh": [], "en": []}
    for conv in data["conversations"]:
        lang = conv.get("lang")
        if lang in picked and len(picked[lang]) < PROMPTS_PER_LANG:
            picked[lang].append(conv["messages"][0]["content"])
    return picked["zh"] + picked["en"]


def answer(model, tokenizer, prompt: str) -> list[int]:
    return greedy_answer_ids(model, tokenizer, [{"role": "user", "content": prompt}], MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatforge.modeling.base import resolve_base
    from chatforge.params import ModelParams
    from chatforge.runtime.folder import Manifest, write_manifest

    resolved = resolve_base(ModelParams(base="smollm2-135m-instruct", family="causal_lm"))
    folder = tmp_path_factory.mktemp("smollm2") / "base"
    resolved.model.save_pretrained(folder)
    resolved.tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant="base", base="smollm2-135m-instruct",
                                    parent=resolved.parent))
    return folder


def test_real_model_exports_answer_like_the_source(smollm2_folder: Path, tmp_path: Path) -> None:
    """The pip-shipped SmolLM2-135M-Instruct base (the built default teacher is measured by
    bench/gguf_parity.py, which needs a `dvc repro` first)."""
    folder = smollm2_folder
    out = tmp_path / "gguf"
    result = CliRunner().invoke(app, ["export", str(folder), str(out), "--type", "f16", "--type", "q8_0",
                                      "--name", "m", "--params", str(ROOT / "params.yaml"),
                                      "--reports", str(ROOT / "reports")])
    assert result.exit_code == 0, result.output

    prompts = demo_prompts()
    source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    source_tok = AutoTokenizer.from_pretrained(folder)
    reference = [answer(source, source_tok, p) for p in prompts]
    scores, sizes = {}, {}
    for kind in ("f16", "q8_0"):
        name = f"m-{kind}.gguf"
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
        for p in prompts:  # the same prompt ids reach both models
            conv = [{"role": "user", "content": p}]
            assert tok.apply_chat_template(conv, add_generation_prompt=True, return_dict=False) == \
                source_tok.apply_chat_template(conv, add_generation_prompt=True, return_dict=False), p
        scores[kind] = token_agreement(reference, [answer(model, tok, p) for p in prompts])
        sizes[kind] = (out / name).stat().st_size
    source_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
    print(f"\nsmollm2_pip: {len(prompts)} prompts, float32 safetensors {source_mb:.1f} MB; "
          f"f16 {sizes['f16'] / 1e6:.1f} MB agreement {scores['f16']:.3f}; "
          f"q8_0 {sizes['q8_0'] / 1e6:.1f} MB agreement {scores['q8_0']:.3f}")
    assert scores["f16"] >= 0.95
    assert scores["q8_0"] >= 0.5
    assert sizes["q8_0"] < sizes["f16"]
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith("# Ollama Modelfile") and "FROM ./m-q8_0.gguf\n" in modelfile
    # SmolLM2's template adds its own system prompt: the Modelfile carries it
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (out / "README.md").read_text(encoding="utf-8")
