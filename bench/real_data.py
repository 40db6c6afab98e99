"""The whole pipeline on real dialogue data nobody in this project wrote: served model vs retrieval.

The demo corpus is generated from templates, and its test split holds the same templates; this
benchmark asks what a team gets on its own data. It copies the project (what git ships) into a
temporary folder, puts real public corpora from ../shared/datasets/ in `ingest.sources` in place
of the demo (English: twitter_customer_care, 1,025 brand-support threads; Chinese: CrossWOZ val +
test, 1,000 task-oriented dialogues), leaves every other param at its default except
`evaluate.fail_on_gate: false` (the numbers are the point), and runs the real `dvc repro`.

The named baseline is the retrieval FAQ bot evaluate already scores on the same test turns
(nearest train user turn -> its answer). Reported per language for the served variant and for
retrieval: BLEU, chrF, degenerate rate and top-answer share, the served/retrieval ratios, the
collapse limit, whether the bar of issue "A bot that understands" is met (served >= retrieval on
BLEU and chrF, degenerate <= 0.02, top-answer share within the collapse limit), and the wall time
of every stage. Saved to reports/bench/real_data.json.

    python bench/real_data.py                      # default params (about 30 minutes on 2 CPU cores)
    python bench/real_data.py -S train.max_steps=200 -S model.base=scratch   # any params override
    python bench/real_data.py --keep /tmp/realrun  # keep the project copy (models, reports) to read answers
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from chatforge.io import write_json
from chatforge.metrics import collapse_limit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
BIN = Path(sys.executable).parent
LANGS = ("zh", "en")
KEYS = ("bleu", "chrf", "degenerate_rate", "top_answer_share", "distinct_2")


def copy_project(dest: Path) -> None:
    """What git would ship (tracked + untracked-not-ignored), without DVC outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        # .dvc/ config and state come from `dvc init`; custom plot templates are project files
        if rel.startswith(".dvc/") and not rel.startswith(".dvc/plots/"):
            continue
        if src.is_file() and not rel.startswith(("data/raw/demo/", "reports/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "data/raw/demo").mkdir(parents=True, exist_ok=True)  # the translator stage reads the demo's pairs
    shutil.copy2(ROOT / "data/raw/demo/parallel.tsv", dest / "data/raw/demo/parallel.tsv")


def place_real_data(dest: Path) -> list[dict[str, Any]]:
    """Copy the real corpora into the throw-away project (never into this repository) and return
    the ingest.sources entries that read them."""
    twitter = SHARED / "twitter_customer_care" / "twitter_customer_care_en.jsonl"
    crosswoz = [SHARED / "crosswoz" / f"{split}.json.zip" for split in ("val", "test")]
    missing = [str(p) for p in (twitter, *crosswoz) if not p.exists()]
    if missing:
        sys.exit(f"real_data: {missing} not found; check out ../shared beside the project")
    (dest / "data/raw/real/crosswoz").mkdir(parents=True)
    shutil.copy2(twitter, dest / "data/raw/real/twitter_customer_care_en.jsonl")
    for z in crosswoz:
        shutil.copy2(z, dest / "data/raw/real/crosswoz" / z.name)
    return [
        {"path": "data/raw/real/twitter_customer_care_en.jsonl", "format": "messages_jsonl", "name": "twitter",
         "options": {"lang": "en"}},
        {"path": "data/raw/real/crosswoz", "format": "crosswoz", "name": "crosswoz", "options": {"lang": "zh"}},
    ]


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[key] = value


def prepare(dest: Path, overrides: list[str]) -> dict[str, Any]:
    copy_project(dest)
    sources = place_real_data(dest)
    params = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8"))
    params["ingest"]["sources"] = sources
    params["evaluate"]["fail_on_gate"] = False
    for item in overrides:
        key, _, value = item.partition("=")
        set_dotted(params, key, yaml.safe_load(value))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    # the demo's paraphrase set asks the demo's intents: meaningless on these corpora
    dvc_yaml = (dest / "dvc.yaml").read_text(encoding="utf-8")
    dvc_yaml = dvc_yaml.replace(" --paraphrases data/eval/demo_paraphrases.jsonl", "")
    dvc_yaml = dvc_yaml.replace("      - data/eval/demo_paraphrases.jsonl\n", "")
    (dest / "dvc.yaml").write_text(dvc_yaml, encoding="utf-8")
    plots = dest / ".dvc" / "plots"
    if plots.exists():  # dvc init refuses a folder that has .dvc/ already
        shutil.move(str(plots), str(dest / "plots.tmp"))
        shutil.rmtree(dest / ".dvc")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=dest, check=True)
    if (dest / "plots.tmp").exists():
        shutil.rmtree(dest / ".dvc" / "plots", ignore_errors=True)
        shutil.move(str(dest / "plots.tmp"), str(dest / ".dvc" / "plots"))
    for cmd in (["git", "add", "-A"],
                ["git", "-c", "user.email=bench@chatforge", "-c", "user.name=bench", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return params


def work_dir(keep: Path | None, prefix: str, *, resume: bool = False) -> tuple[Path, Any]:
    """The folder a benchmark works in and what removes it: `keep` emptied (kept as it is with
    `resume`), else a new temporary directory (the second value; None for `keep`)."""
    if keep is None:
        cleanup = tempfile.TemporaryDirectory(prefix=prefix)
        return Path(cleanup.name), cleanup
    if not resume:
        if keep.exists():
            shutil.rmtree(keep)
        keep.mkdir(parents=True)
    return keep, None


def run_pipeline(dest: Path, *repro_args: str) -> tuple[dict[str, float], int]:
    """`dvc repro [REPRO_ARGS]` in the copy, its output streamed; wall seconds per stage that ran
    (from dvc's "Running stage" lines) and the exit code. bench/feedback_loop.py times its rounds with it."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(dest / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", *repro_args], cwd=dest, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    times: dict[str, float] = {}
    stage, started = None, time.perf_counter()
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        m = re.search(r"Running stage '([^']+)'", line)
        if m:
            now = time.perf_counter()
            if stage:
                times[stage] = round(now - started, 1)
            stage, started = m.group(1), now
    rc = proc.wait()
    if stage:
        times[stage] = round(time.perf_counter() - started, 1)
    return times, rc


def compare(evaluation: dict[str, Any], gates: dict[str, Any]) -> dict[str, Any]:
    served_name = evaluation.get("summary", {}).get("served_variant", "int8")
    served, retrieval = evaluation.get(served_name, {}), evaluation.get("retrieval", {})
    summary = evaluation.get("summary", {})
    out: dict[str, Any] = {"served_variant": served_name, "served": {}, "retrieval": {}, "ratio": {}, "bar": {}}
    for lang in LANGS:
        for key in KEYS:
            k = f"{key}_{lang}"
            s, r = served.get(k), retrieval.get(k)
            out["served"][k], out["retrieval"][k] = s, r
            out["ratio"][k] = (s / r) if isinstance(s, (int, float)) and isinstance(r, (int, float)) and r else None
        limit = collapse_limit(float(summary.get(f"reference_top_answer_share_{lang}", float("nan"))),
                               floor=gates.get("collapse_floor", 0.05), factor=gates.get("collapse_factor", 1.5))
        out["bar"][f"collapse_limit_{lang}"] = limit
        checks = {
            f"bleu_{lang}": (served.get(f"bleu_{lang}") or 0) >= (retrieval.get(f"bleu_{lang}") or 0),
            f"chrf_{lang}": (served.get(f"chrf_{lang}") or 0) >= (retrieval.get(f"chrf_{lang}") or 0),
            f"degenerate_{lang}": (served.get(f"degenerate_rate_{lang}") or 0) <= gates.get("max_degenerate_rate", 0.02),
            f"collapse_{lang}": (served.get(f"top_answer_share_{lang}") or 0) <= limit,
        }
        out["bar"] |= {f"{k}_ok": v for k, v in checks.items()}
    out["bar"]["met"] = all(v for k, v in out["bar"].items() if k.endswith("_ok"))
    for key in ("answered_by_model", "answered_by_retrieval", "fallback_rate", "slot_carry"):
        out["served"][key] = served.get(key)
    out["samples"] = {lang: summary.get(f"samples_{lang}") for lang in LANGS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="params override key=value")
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temp dir)")
    ap.add_argument("--resume", action="store_true", help="with --keep: go on with the kept copy's `dvc repro`")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "real_data.json")
    args = ap.parse_args()
    dest, cleanup = work_dir(args.keep, "chatforge-real-", resume=args.resume)
    if args.resume:  # a kept copy whose `dvc repro` stopped: run it on, same data and params
        params = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8"))
    else:
        params = prepare(dest, args.overrides)
    t0 = time.perf_counter()
    times, rc = run_pipeline(dest)
    minutes = (time.perf_counter() - t0) / 60
    evaluation_path = dest / "reports" / "evaluate.json"
    if rc != 0 or not evaluation_path.exists():
        sys.exit(f"real_data: dvc repro failed (exit {rc}); run with --keep DIR and read DIR's logs")
    evaluation = json.loads(evaluation_path.read_text(encoding="utf-8"))
    result = {
        "benchmark": "real_data",
        "baseline": "retrieval (nearest train user turn -> its answer, character 1-3-gram TF-IDF)",
        "data": {"en": "twitter_customer_care (1,025 threads)", "zh": "crosswoz val+test (1,000 dialogues)"},
        "overrides": args.overrides,
        "model_base": params["model"]["base"],
        "minutes": round(minutes, 1),
        # --resume: only the stages in stage_seconds ran in this call; the others are the kept copy's earlier outputs
        "resumed": bool(args.resume),
        "evaluate_variants": params["evaluate"].get("variants"),  # the served one is what the bar reads
        "stage_seconds": times,
        **compare(evaluation, params["evaluate"]["gates"]),
        "ingest": json.loads((dest / "reports" / "ingest.json").read_text(encoding="utf-8")),
    }
    write_json(result, args.out)
    print(f"\nreal data ({minutes:.1f} min): served {result['served_variant']} vs retrieval")
    for lang in LANGS:
        for key in KEYS:
            k = f"{key}_{lang}"
            ratio = result["ratio"][k]
            print(f"  {k:22s} served {result['served'][k]!s:>22}  retrieval {result['retrieval'][k]!s:>22}  "
                  f"ratio {'-' if ratio is None else f'{ratio:.3f}'}")
    print(f"  bar met: {result['bar']['met']}  ->  {args.out}")
    if cleanup is not None:
        cleanup.cleanup()


if __name__ == "__main__":
    main()
