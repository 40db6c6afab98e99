"""GGUF export parity of a built model: greedy answers from the exported files against the source folder.

    python bench/gguf_parity.py [--model models/teacher] [--prompts 10] [--max-new-tokens 32] [--llama-cpp DIR]

Exports --model (a causal-LM folder `dvc repro` built; default the teacher) at f16 and Q8_0 with
the export `chatforge export` runs (chatforge.compress.gguf_export.export_gguf), loads each file back with transformers (`from_pretrained(gguf_file=...)`) and
answers the first user turn of the first --prompts test-split conversations (half zh, half en,
data/split/test.parquet). The baseline is the source folder itself in float32 (transformers): the
ratio printed is the top-1 token agreement of each file's greedy answers with the baseline's
(chatforge.compress.gguf_export.token_agreement), beside the size ratio. The issue's bar: f16 >= 0.95.
With --llama-cpp DIR (a folder where `npm install node-llama-cpp@3.22.1` was run: llama.cpp's
prebuilt CPU build), each file is also decoded greedily by llama.cpp itself from the same prompt
ids (bench/llama_cpp_greedy.mjs); those answers are compared without their end-of-generation token,
which node-llama-cpp does not return. Writes reports/bench/gguf_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_prompts(split: Path, n: int) -> list[str]:
    """The first user message of the first n/2 zh and n - n/2 en conversations of the test split."""
    import polars as pl

    first = (pl.read_parquet(split).filter(pl.col("role") == "user").sort("conversation_id", "turn")
             .group_by("conversation_id", maintain_order=True).first())
    zh = first.filter(pl.col("lang") == "zh")["content"].to_list()[: n // 2]
    en = first.filter(pl.col("lang") == "en")["content"].to_list()[: n - n // 2]
    return zh + en


def strip(answer: list[int], eos: set[int]) -> list[int]:
    return answer[:-1] if answer and answer[-1] in eos else answer


def llama_cpp_answers(gguf: Path, tokenizer, conversations, args) -> list[list[int]]:
    """Greedy answers of `gguf` decoded by llama.cpp (bench/llama_cpp_greedy.mjs) from the source tokenizer's prompt ids."""
    rows = [{"ids": list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)),
             "max_new_tokens": args.max_new_tokens} for c in conversations]
    with tempfile.TemporaryDirectory() as tmp:
        given, got = Path(tmp) / "in.json", Path(tmp) / "out.json"
        given.write_text(json.dumps(rows), encoding="utf-8")
        script = Path(__file__).with_name("llama_cpp_greedy.mjs")
        subprocess.run(["node", str(script), str(gguf), str(given), str(got), str(args.llama_cpp / "node_modules")],
                       check=True, timeout=900)
        return [r["answer"] for r in json.loads(got.read_text(encoding="utf-8"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/teacher"))
    parser.add_argument("--split", type=Path, default=Path("data/split/test.parquet"))
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--llama-cpp", type=Path, default=None, help="folder with node_modules/node-llama-cpp")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/gguf_parity.json"))
    args = parser.parse_args()
    if not (args.model / "config.json").is_file() or not args.split.is_file():
        sys.exit(f"{args.model} or {args.split} is missing: run `dvc repro` first (or pass --model / --split).")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatforge.compress.gguf_export import export_gguf, gguf_file_name, greedy_answer_ids, token_agreement
    from chatforge.io import write_json

    prompts = test_prompts(args.split, args.prompts)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    source = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    source_tok = AutoTokenizer.from_pretrained(args.model)
    started = time.perf_counter()
    reference = [greedy_answer_ids(source, source_tok, c, args.max_new_tokens) for c in conversations]
    baseline_s = time.perf_counter() - started
    source_bytes = sum(f.stat().st_size for f in args.model.glob("*.safetensors"))
    report: dict[str, object] = {"model": str(args.model), "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                                 "baseline": "source folder, float32 transformers",
                                 "baseline_bytes": source_bytes, "baseline_answer_s": round(baseline_s, 2), "files": {}}
    print(f"baseline {args.model} float32: {source_bytes / 1e6:.1f} MB, {len(prompts)} prompts in {baseline_s:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for kind in ("f16", "q8_0"):
            name = gguf_file_name("m", kind)
            export_gguf(args.model, out / name, gguf_type=kind, name="m")
            model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
            tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
            score = token_agreement(reference, [greedy_answer_ids(model, tok, c, args.max_new_tokens)
                                                for c in conversations])
            size = (out / name).stat().st_size
            report["files"][kind] = {"bytes": size, "size_ratio": round(size / source_bytes, 3),  # type: ignore[index]
                                     "top1_agreement": round(score, 3)}
            print(f"{kind}: {size / 1e6:.1f} MB (x{size / source_bytes:.2f} of the baseline), "
                  f"top-1 token agreement with the baseline {score:.3f}")
            if args.llama_cpp is not None:
                lc = llama_cpp_answers(out / name, source_tok, conversations, args)
                eos = {source_tok.eos_token_id}
                lc_score = token_agreement([strip(a, eos) for a in reference], [strip(a, eos) for a in lc])
                report["files"][kind]["llama_cpp_top1_agreement"] = round(lc_score, 3)  # type: ignore[index]
                print(f"{kind} in llama.cpp: top-1 token agreement with the baseline {lc_score:.3f} "
                      f"({sum(strip(a, eos) == strip(b, eos) for a, b in zip(reference, lc))}/{len(lc)} answers identical)")
    write_json(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
