"""Training throughput: chatforge's loop against Hugging Face `Trainer` with its default collator.

Same model (a fresh Llama config, same initial weights), same data (the demo corpus, chat-formatted,
loss on assistant tokens only), same batch size, sequence length, optimizer (AdamW), schedule
(cosine with warmup) and number of optimizer steps, in one run. Trainer gets
DataCollatorForSeq2Seq (padding to the longest sequence of each random batch); chatforge runs
its length-grouped batching and its packing. Reported: trained (non-padding) tokens per second
for each, the ratio, and the final val loss of each trained model (the same function computes it).
On a GPU, model FLOPs utilisation against the GPU's bf16 dense peak as well.

    python bench/train_throughput.py            # CPU-sized default
    python bench/train_throughput.py --layers 12 --hidden 768 --steps 200 --batch-size 16  # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import polars as pl
import torch

from chatforge.data.schema import conform
from chatforge.io import write_json
from chatforge.modeling.base import build_scratch
from chatforge.modeling.data import collate_packed, pack
from chatforge.modeling.train import evaluate_loss, train
from chatforge.params import ModelParams, TrainParams
from chatforge.runtime.conversation import conversations, tokenize_conversations
from chatforge.runtime.folder import Manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


def demo_turns(path: Path, limit: int) -> pl.DataFrame:
    data = json.loads(path.read_text(encoding="utf-8"))["conversations"][:limit]
    rows = [
        {"conversation_id": c["id"], "turn": t, "role": m["role"], "content": m["content"], "lang": c.get("lang"),
         "intent": c.get("intent"), "source": "demo", "method": "original"}
        for c in data for t, m in enumerate(c["messages"])
    ]
    return conform(pl.DataFrame(rows))


def run_trainer(base: Path, examples, tp: TrainParams, out: Path) -> tuple[float, int, object]:
    """HF Trainer, default padding collator; returns (seconds in trainer.train(), trained tokens, model)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    counted = {"tokens": 0}

    def collate(features):  # the default collator, plus a count of the real tokens it is given
        counted["tokens"] += sum(len(f["input_ids"]) for f in features)
        return collator(features)

    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=tp.batch_size, max_steps=tp.max_steps, learning_rate=tp.lr,
        lr_scheduler_type="cosine", warmup_steps=tp.warmup_steps, weight_decay=0.0, max_grad_norm=tp.max_grad_norm,
        optim="adamw_torch", logging_steps=10, save_strategy="no", report_to=[], seed=tp.seed,
        dataloader_num_workers=0, remove_unused_columns=False, bf16=tp.precision == "bf16",
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, counted["tokens"], trainer.model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--conversations", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "train_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()

    turns = demo_turns(ROOT / "data" / "raw" / "demo" / "conversations.json", args.conversations)
    ids = sorted(turns["conversation_id"].unique().to_list())
    val_ids = set(ids[:: 10])
    train_turns = turns.filter(~pl.col("conversation_id").is_in(list(val_ids)))
    val_turns = turns.filter(pl.col("conversation_id").is_in(list(val_ids)))
    mp = ModelParams(family="causal_lm", base="scratch", scratch={
        "layers": args.layers, "hidden": args.hidden, "heads": max(1, args.hidden // 64), "vocab_size": 8000,
        "max_position_embeddings": max(512, args.max_seq_len)})
    common = {"lr": 1e-3, "lr_min": 1e-5, "warmup_steps": max(1, args.steps // 10), "batch_size": args.batch_size,
              "max_steps": args.steps, "max_seq_len": args.max_seq_len, "eval_every_steps": args.steps, "bleu_samples": 0,
              "early_stopping_patience": 0, "precision": "bf16" if cuda else "fp32", "seed": 7}

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base_dir = tmp / "base"
        built = build_scratch(mp, train_turns["content"].to_list())
        built.model.save_pretrained(base_dir)
        built.tokenizer.save_pretrained(base_dir)
        write_manifest(base_dir, Manifest(family="causal_lm", variant="base", base="scratch"))
        n_params = sum(p.numel() for p in built.model.parameters())
        tok = built.tokenizer
        train_ex, _ = tokenize_conversations(conversations(train_turns), tok, max_seq_len=args.max_seq_len, overlong="truncate")
        val_ex, _ = tokenize_conversations(conversations(val_turns), tok, max_seq_len=args.max_seq_len, overlong="truncate")
        val_batches = [collate_packed(r, pad_id=tok.pad_token_id) for r in
                       [pack(val_ex, max_seq_len=args.max_seq_len)[i : i + 8] for i in range(0, len(val_ex), 8)] if r]
        device = torch.device("cuda" if cuda else "cpu")

        def val_loss(model) -> float:
            return evaluate_loss(model.to(device), val_batches, family="causal_lm", device=device,
                                 autocast=contextlib.nullcontext)

        results: dict[str, dict[str, float]] = {}
        for batching in ("length_group", "pack"):
            tp = TrainParams(**common, batching=batching)
            out = train(model_params=mp, train_params=tp, base_dir=base_dir, train_turns=train_turns, val_turns=val_turns)
            results[f"chatforge_{batching}"] = {
                "tokens_per_second": out.timing["tokens_per_second"], "trained_tokens": out.timing["trained_tokens"],
                "seconds": out.timing["train_seconds"], "final_val_loss": val_loss(out.model)}
        tp = TrainParams(**common)
        seconds, tokens, model = run_trainer(base_dir, train_ex, tp, tmp / "hf")
        results["hf_trainer"] = {"tokens_per_second": tokens / seconds, "trained_tokens": tokens, "seconds": seconds,
                                 "final_val_loss": val_loss(model)}

    hf = results["hf_trainer"]
    report: dict[str, object] = {
        "config": {**vars(args), "out": str(args.out), "parameters": n_params, "device": "cuda" if cuda else "cpu",
                   "train_conversations": len(train_ex)},
        **{f"{name}_{k}": v for name, r in results.items() for k, v in r.items()},
    }
    for name in ("chatforge_length_group", "chatforge_pack"):
        r = results[name]
        report[f"{name}_speedup"] = r["tokens_per_second"] / hf["tokens_per_second"]
        report[f"{name}_loss_diff_rel"] = abs(r["final_val_loss"] - hf["final_val_loss"]) / hf["final_val_loss"]
    if cuda:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        for key, r in results.items():
            # 6 N flops per trained token (forward + backward), attention ignored: a lower bound
            report[f"{key}_mfu"] = 6 * n_params * r["tokens_per_second"] / (peak * 1e12) if peak else None
        report["gpu"] = name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out)
    print(f"{'loop':<24}{'tokens/s':>12}{'tokens':>10}{'seconds':>10}{'val loss':>10}")
    for name, r in results.items():
        print(f"{name:<24}{r['tokens_per_second']:>12.1f}{r['trained_tokens']:>10}{r['seconds']:>10.1f}{r['final_val_loss']:>10.4f}")
    for name in ("chatforge_length_group", "chatforge_pack"):
        print(f"{name} vs hf_trainer: {report[f'{name}_speedup']:.2f}x tokens/s (target >= 1.5x), "
              f"val loss differs by {100 * report[f'{name}_loss_diff_rel']:.2f}% (target <= 2%)")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
