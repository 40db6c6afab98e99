"""Base x training recipe x retrieval use: what each option buys on the demo, away from its templates.

One option per run, against the retrieval baseline on the same questions in the same run: resolve
`model.base` (as the base stage does, slot placeholders included), train it with params.yaml's
`train` section plus the -S overrides (as the train stage does, on the built data/augmented.parquet),
publish it with its exchanges (retrieval in the loop), then answer with the torch model as
`chatforge serve` would, through evaluate's own functions: the first N test assistant turns per
language (BLEU, chrF, slot carry, degenerate, top-answer share) and the whole paraphrase set
(data/eval/demo_paraphrases.jsonl: on-intent rate), served (retrieval in the loop) and the model's own
generations. Writes
reports/bench/base_options/<name>.json and prints the table row. Needs `dvc repro augment` first.

    python bench/base_options.py --name scratch-800 -S model.base=scratch
    python bench/base_options.py --name gemma-top4-60 -S model.base=gemma3-270m -S train.freeze=bottom \\
        -S train.freeze_layers=14 -S train.max_steps=60 -S train.lr=1e-4 --samples-per-lang 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import polars as pl
import yaml

from chatforge.data.entities import read_gazetteers
from chatforge.evaluation import evaluate as ev
from chatforge.evaluation.paraphrase import IntentJudge, read_paraphrases
from chatforge.io import setup_logging, write_json
from chatforge.modeling.base import add_slot_placeholders, check_base, resolve_base
from chatforge.modeling.train import train
from chatforge.params import EvaluateParams, ModelParams, ServeParams, TrainParams
from chatforge.runtime.conversation import conversations
from chatforge.runtime.folder import Manifest, write_manifest
from chatforge.runtime.index import write_index
from chatforge.runtime.quality import answer_samples

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = ("bleu_zh", "bleu_en", "chrf_zh", "chrf_en", "slot_carry", "degenerate_rate", "top_answer_share_zh",
            "top_answer_share_en", "paraphrase_on_intent_zh", "paraphrase_on_intent_en", "answered_by_retrieval")
# what evaluate keeps of the model's own answers too (model_<key>)


def sections(overrides: list[str]) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="row name; the JSON is reports/bench/base_options/<name>.json")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="params override key=value")
    ap.add_argument("--samples-per-lang", type=int, default=150, help="test assistant turns per language")
    ap.add_argument("--keep", type=Path, default=None, help="publish the trained folder here (default: a temp dir)")
    args = ap.parse_args()
    log = setup_logging("base_options")
    data = sections(args.overrides)
    mp, tp = ModelParams.model_validate(data["model"]), TrainParams.model_validate(data["train"])
    ep, sp = EvaluateParams.model_validate(data["evaluate"]), ServeParams.model_validate(data["serve"])
    kind = check_base(mp)
    train_split = pl.read_parquet(ROOT / "data/split/train.parquet")
    work = Path(tempfile.mkdtemp(prefix="chatforge-options-"))
    base_dir, out_dir = work / "base", args.keep or work / "teacher"

    t0 = time.perf_counter()
    base = resolve_base(mp, corpus=train_split["content"].to_list() if kind == "scratch" else None)
    gazetteer = read_gazetteers(ROOT / "lexicons/gazetteers", langs=("zh", "en"),
                                kinds=[k for k in mp.slots.kinds if k != "number"])
    if mp.slots.enabled:
        add_slot_placeholders(base, mp.slots.kinds, max_per_kind=mp.slots.max_per_kind, gazetteer=gazetteer)
    base.model.save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    write_manifest(base_dir, Manifest(family="causal_lm", variant="base", parent=base.parent, base=mp.base))
    base_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    outcome = train(model_params=mp, train_params=tp, base_dir=base_dir,
                    train_turns=pl.read_parquet(ROOT / "data/augmented.parquet"),
                    val_turns=pl.read_parquet(ROOT / "data/split/val.parquet"))
    train_s = time.perf_counter() - t0
    outcome.model.save_pretrained(out_dir)
    outcome.tokenizer.save_pretrained(out_dir)
    write_manifest(out_dir, Manifest(family="causal_lm", variant="teacher", parent=str(base_dir), base=mp.base))
    write_index(out_dir, conversations(train_split.filter(pl.col("method") == "original")))

    t0 = time.perf_counter()
    convs, _ = ev.test_conversations(pl.read_parquet(ROOT / "data/split/test.parquet"))
    samples, _ = answer_samples(convs, max_per_lang=args.samples_per_lang, seed=ep.seed)
    questions = read_paraphrases(ROOT / "data/eval/demo_paraphrases.jsonl")
    judge = IntentJudge(conversations(train_split.filter(pl.col("method") == "original")), fallbacks=sp.fallback.values())
    flat = {lang: [e for entries in by_kind.values() for e in entries] for lang, by_kind in gazetteer.items()}
    rows: dict[str, dict[str, Any]] = {}
    rows["retrieval"], _ = ev.evaluate_retrieval(train_split, samples, gazetteer=flat, questions=questions, judge=judge)
    serving = ev.Serving(sp.confidence_threshold, sp.confidence_tokens, sp.hybrid, sp.fallback,
                         ev.Sampling(sp.temperature, sp.top_p, sp.seed))
    served, _ = ev.evaluate_variant("teacher", out_dir, convs, samples, ep.model_copy(update={"latency_runs": 1}),
                                    serving=serving, gazetteer=flat, questions=questions, judge=judge)
    rows["served: model + retrieval in the loop"] = served
    # the same generations before the threshold and retrieval in the loop (evaluate's model_* keys)
    rows["model alone"] = {k: served.get(f"model_{k}") for k in ROW_KEYS}
    eval_s = time.perf_counter() - t0
    result = {"name": args.name, "overrides": args.overrides, "base": mp.base, "parameters": outcome.details.get("parameters"),
              "train_steps": outcome.metrics.get("steps"), "minutes": {"base": base_s / 60, "train": train_s / 60,
                                                                        "evaluate": eval_s / 60},
              "samples_per_lang": args.samples_per_lang, "paraphrase_questions": len(questions),
              "rows": {k: {key: v.get(key) for key in (*ROW_KEYS, "model_bleu_zh", "model_bleu_en", "fallback_rate")}
                       for k, v in rows.items()},
              "train_metrics": {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}}
    write_json(result, ROOT / "reports" / "bench" / "base_options" / f"{args.name}.json")
    print(f"\n{args.name}: base {base_s / 60:.1f} min, train {train_s / 60:.1f} min ({result['train_steps']} steps), "
          f"evaluate {eval_s / 60:.1f} min")
    print("row | " + " | ".join(ROW_KEYS))
    for label, r in result["rows"].items():
        print(f"{label} | " + " | ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in ROW_KEYS))
    log.info("wrote reports/bench/base_options/%s.json", args.name)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
