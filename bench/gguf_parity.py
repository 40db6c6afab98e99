"""GGUF export parity of a built model: greedy answers from the exported files against the source folder.

    python bench/gguf_parity.py [--model models/teacher] [--prompts 10] [--max-new-tokens 32]

Exports --model (a causal-LM folder `dvc repro` built; default the teacher) with `chatforge export`
at f16 and Q8_0, loads each file back with transformers (`from_pretrained(gguf_file=...)`) and
answers the first user turn of the first --prompts test-split conversations (half zh, half en,
data/split/test.parquet). The baseline is the source folder itself in float32 (transformers): the
ratio printed is the top-1 token agreement of each file's greedy answers with the baseline's
(chatforge.compress.gguf_export.token_agreement), beside the size ratio. The issue's bar: f16 >= 0.95.
Writes reports/bench/gguf_parity.json.
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/teacher"))
    parser.add_argument("--split", type=Path, default=Path("data/split/test.parquet"))
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=32)
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
    write_json(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
