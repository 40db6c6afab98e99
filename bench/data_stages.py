"""Benchmark: ingest + clean of at least 1,000,000 turns, chatforge against a pure-Python baseline.

    python bench/data_stages.py                  # the full run (>= 1,000,000 turns, both sides in full)
    python bench/data_stages.py --turns 50000    # a quick look

The demo corpus (data/raw/demo/conversations.json) is scaled up by replicating its conversations under
new ids with seeded perturbations, so that duplicate removal still has real work without everything
collapsing: per copy, 8% stay exact copies, 12% become near copies (case, spacing, punctuation,
emoji changed) and the rest get a distinct detail added to a user turn. Both sides then run in their
own subprocess (so each peak RSS is its own):

- chatforge: `chatforge.data.ingest.ingest` on the scaled JSON, then `chatforge.data.clean.clean_turns`
  with the clean section of params.yaml and the project lexicon.
- baseline (bench/baseline_clean.py): json.load plus a loop for reading, then the same clean rules one
  row at a time in pure Python. So that both cleans see exactly the same rows, the baseline cleans the
  turns chatforge's ingest produced (loaded untimed); its own read is timed on the same JSON file.

Prints and writes reports/bench/data_stages.json: rows, seconds per phase, the clean speed-up (target
>= 10x), peak memory, whether the 1M-turn clean took under 60 s, and whether both sides kept the same
rows with the same text.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

ROOT = Path(__file__).resolve().parents[1]
EMOJI = ("😊", "👍", "🙏", "★", "～～")


def _perturb_near(text: str, rng: random.Random) -> str:
    """Changes near-duplicate folding ignores: case, spacing, punctuation, emoji and symbols."""
    choice = rng.randrange(4)
    if choice == 0:
        return text.upper() if text.isascii() else text + "！"
    if choice == 1:
        return "  ".join(text.split(" ")) + " "
    if choice == 2:
        return text.rstrip("。.!！?？") + rng.choice(("。", "!", "?", "..."))
    return text + rng.choice(EMOJI)


def scale_corpus(conversations: list[dict[str, Any]], *, min_turns: int, seed: int) -> list[dict[str, Any]]:
    """Copies of `conversations` (first the originals) until at least `min_turns` messages."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    turns, copy = 0, 0
    while turns < min_turns:
        for conv in conversations:
            messages = [dict(m) for m in conv["messages"]]
            if copy:
                draw = rng.random()
                user = [
                    i
                    for i, m in enumerate(messages)
                    if m.get("role") == "user" and isinstance(m.get("content"), str)
                ]
                if draw < 0.08 or not user:
                    pass
                elif draw < 0.20:
                    i = rng.choice(user)
                    messages[i]["content"] = _perturb_near(messages[i]["content"], rng)
                else:
                    i = rng.choice(user)
                    detail = (
                        f"（第{rng.randrange(1, 10**6)}号）"
                        if conv.get("lang") == "zh"
                        else f" (case {rng.randrange(1, 10**6)})"
                    )
                    messages[i]["content"] = messages[i]["content"] + detail
            out.append({**conv, "id": f"{conv['id']}_x{copy:03d}", "messages": messages})
            turns += len(messages)
            if turns >= min_turns:
                break
        copy += 1
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _clean_setup() -> tuple[Any, dict[str, str]]:
    from chatforge.data.clean import load_synonyms
    from chatforge.params import CleanParams, load_section

    params = load_section("clean", path=ROOT / "params.yaml")
    assert isinstance(params, CleanParams)
    synonyms = load_synonyms(ROOT / params.synonyms_path) if params.synonyms_path else {}
    return params, synonyms


def run_project(work: Path) -> dict[str, Any]:
    import polars as pl

    from chatforge.data.clean import clean_turns
    from chatforge.data.ingest import ingest
    from chatforge.io import write_parquet
    from chatforge.params import IngestParams

    params, synonyms = _clean_setup()
    ingest_params = IngestParams.model_validate(
        {"sources": [{"path": "scaled.json", "format": "conversations_json", "name": "demo"}]}
    )
    start = time.perf_counter()
    turns = ingest(ingest_params, base_dir=work).turns
    ingest_s = time.perf_counter() - start
    start = time.perf_counter()
    cleaned, counts = clean_turns(turns, params=params, synonyms=synonyms)
    clean_s = time.perf_counter() - start
    write_parquet(turns, work / "turns.parquet")
    write_parquet(cleaned, work / "project.parquet")
    return {
        "ingest_s": ingest_s,
        "clean_s": clean_s,
        "rows_in": turns.height,
        "counts": counts,
        "peak_rss_mb": _peak_rss_mb(),
        "polars_threads": pl.thread_pool_size(),
    }


def run_baseline(work: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from baseline_clean import BaselineCleaner, read_conversations_json

    params, synonyms = _clean_setup()
    start = time.perf_counter()
    cleaner = BaselineCleaner(params, synonyms)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    read_rows = len(read_conversations_json(work / "scaled.json"))
    read_s = time.perf_counter() - start

    import polars as pl

    rows = pl.read_parquet(
        work / "turns.parquet"
    ).to_dicts()  # chatforge's ingest output: same input, untimed
    start = time.perf_counter()
    kept, counts = cleaner.clean(rows)
    clean_s = time.perf_counter() - start
    del rows
    schema = pl.read_parquet_schema(work / "turns.parquet")
    pl.DataFrame(kept, schema=schema).write_parquet(work / "baseline.parquet")
    return {
        "setup_s": setup_s,
        "read_s": read_s,
        "read_rows": read_rows,
        "clean_s": clean_s,
        "counts": counts,
        "peak_rss_mb": _peak_rss_mb(),
    }


def compare(work: Path) -> dict[str, int]:
    import polars as pl

    project = pl.read_parquet(work / "project.parquet").select("conversation_id", "turn", "content")
    baseline = pl.read_parquet(work / "baseline.parquet").select("conversation_id", "turn", "content")
    both = project.join(
        baseline, on=["conversation_id", "turn"], how="full", suffix="_baseline", coalesce=True
    )
    return {
        "rows_only_in_project": int(both["content_baseline"].is_null().sum()),
        "rows_only_in_baseline": int(both["content"].is_null().sum()),
        "rows_with_different_text": int((both["content"] != both["content_baseline"]).sum()),
    }


def _phase(name: str, work: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--work", str(work)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} phase failed:\n{done.stderr[-4000:]}")
    return json.loads((work / f"{name}.json").read_text(encoding="utf-8"))


def main(
    turns: Annotated[
        int, typer.Option(help="Scale the demo corpus to at least this many turns.")
    ] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the replication perturbations.")] = 20240520,
    corpus: Annotated[Path, typer.Option(help="Seed conversations JSON.")] = ROOT
    / "data/raw/demo/conversations.json",
    out: Annotated[Path, typer.Option(help="Where to write the results.")] = ROOT
    / "reports/bench/data_stages.json",
    phase: Annotated[str, typer.Option(hidden=True)] = "",
    work: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if phase:
        assert work is not None
        result = run_project(work) if phase == "project" else run_baseline(work)
        (work / f"{phase}.json").write_text(json.dumps(result), encoding="utf-8")
        return
    if not corpus.is_file():
        raise SystemExit(
            f"{corpus} not found: generate the demo corpus first (python scripts/make_demo_corpus.py)."
        )
    seed_convs = json.loads(corpus.read_text(encoding="utf-8"))["conversations"]
    with tempfile.TemporaryDirectory(prefix="chatforge-bench-") as tmp:
        work_dir = Path(tmp)
        start = time.perf_counter()
        # 1% over: ingest rejects a few of the demo's deliberately broken conversations
        scaled = scale_corpus(seed_convs, min_turns=int(turns * 1.01), seed=seed)
        with (work_dir / "scaled.json").open("w", encoding="utf-8") as fh:
            json.dump({"conversations": scaled}, fh, ensure_ascii=False)
        n_convs, n_msgs = len(scaled), sum(len(c["messages"]) for c in scaled)
        del scaled
        print(
            f"scaled corpus: {n_convs} conversations, {n_msgs} messages ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        project = _phase("project", work_dir)
        print(f"chatforge: ingest {project['ingest_s']:.1f} s, clean {project['clean_s']:.1f} s", flush=True)
        baseline = _phase("baseline", work_dir)
        print(f"baseline:  read {baseline['read_s']:.1f} s, clean {baseline['clean_s']:.1f} s", flush=True)
        agreement = compare(work_dir)

    rows = project["rows_in"]
    count_differences = {
        k: [project["counts"][k], baseline["counts"][k]]
        for k in project["counts"]
        if project["counts"][k] != baseline["counts"][k]
    }
    report = {
        "input": {
            "conversations": n_convs,
            "messages": n_msgs,
            "turns_after_ingest": rows,
            "seed": seed,
            "seed_corpus": str(corpus.relative_to(ROOT) if corpus.is_relative_to(ROOT) else corpus),
        },
        "chatforge": {
            "ingest_s": round(project["ingest_s"], 3),
            "clean_s": round(project["clean_s"], 3),
            "ingest_clean_s": round(project["ingest_s"] + project["clean_s"], 3),
            "peak_rss_mb": round(project["peak_rss_mb"], 1),
            "polars_threads": project["polars_threads"],
        },
        "baseline": {
            "read_s": round(baseline["read_s"], 3),
            "clean_s": round(baseline["clean_s"], 3),
            "read_clean_s": round(baseline["read_s"] + baseline["clean_s"], 3),
            "setup_s_untimed": round(baseline["setup_s"], 3),
            "read_rows": baseline["read_rows"],
            "peak_rss_mb": round(baseline["peak_rss_mb"], 1),
            "ran_in_full": True,
        },
        "clean_speedup": round(baseline["clean_s"] / project["clean_s"], 2),
        "ingest_clean_speedup": round(
            (baseline["read_s"] + baseline["clean_s"]) / (project["ingest_s"] + project["clean_s"]), 2
        ),
        "clean_speedup_target": 10.0,
        "clean_speedup_met": baseline["clean_s"] / project["clean_s"] >= 10.0,
        "clean_seconds_per_million_turns": round(project["clean_s"] * 1_000_000 / rows, 2),
        "clean_1m_turns_under_60s": rows >= 1_000_000 and project["clean_s"] < 60.0,
        "rows_out": {"chatforge": project["counts"]["rows_out"], "baseline": baseline["counts"]["rows_out"]},
        "agreement": agreement,
        "count_differences": count_differences,
        "clean_counts": project["counts"],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(
        f"turns: {rows}  rows out: chatforge {report['rows_out']['chatforge']}, baseline {report['rows_out']['baseline']}"
    )
    print(
        f"clean: chatforge {project['clean_s']:.2f} s vs baseline {baseline['clean_s']:.2f} s -> {report['clean_speedup']}x "
        f"(target >= 10x: {'met' if report['clean_speedup_met'] else 'NOT met'})"
    )
    print(
        f"ingest+clean: chatforge {report['chatforge']['ingest_clean_s']:.2f} s vs baseline read+clean "
        f"{report['baseline']['read_clean_s']:.2f} s -> {report['ingest_clean_speedup']}x"
    )
    print(
        f"1M turns through clean under 60 s: {report['clean_1m_turns_under_60s']} "
        f"({report['clean_seconds_per_million_turns']} s per million turns)"
    )
    print(
        f"peak RSS: chatforge {report['chatforge']['peak_rss_mb']} MB, baseline {report['baseline']['peak_rss_mb']} MB"
    )
    print(f"agreement: {agreement}; count differences: {count_differences or 'none'}")
    print(f"-> {out}")


if __name__ == "__main__":
    typer.run(main)
