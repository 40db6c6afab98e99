"""The build report: one Markdown page (reads well on GitHub) plus PNG figures.

Everything here reads what the stages already wrote (reports/*.json, dvclive curves, dvc.lock);
nothing is recomputed. A stage that did not run yields a short "not run" line, not a failure, so the
report also renders for a partial pipeline.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

STAGES = ("ingest", "clean", "split", "balance", "translator", "augment", "base", "train", "kto", "distill", "prune", "quantize", "evaluate")
VARIANTS = ("retrieval", "base", "teacher", "aligned", "student", "pruned", "int8")
PACKAGES = ("torch", "transformers", "accelerate", "polars", "dvc", "onnx", "onnxruntime", "torch-pruning", "sacrebleu", "peft")


def load_reports(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for stage in STAGES:
        path = folder / f"{stage}.json"
        if path.exists():
            out[stage] = json.loads(path.read_text(encoding="utf-8"))
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def key_values(d: Mapping[str, Any], *, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> str:
    flat = flatten(d)
    rows = [
        (k, v) for k, v in flat.items()
        if (not include or any(k.startswith(p) for p in include)) and not any(k.startswith(p) for p in exclude)
    ]
    return table(["metric", "value"], rows) if rows else "_(nothing recorded)_"


# ------------------------------------------------------------------------------------------- figures
def plot_balance(csv_path: Path):
    """Grouped bars: conversations per intent before and after balancing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    intents = sorted({r["intent"] for r in rows})
    stages = sorted({r["stage"] for r in rows}, key=lambda s: (s != "before", s))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(intents) + 1.5))
    height = 0.8 / max(1, len(stages))
    for j, stage in enumerate(stages):
        counts = {r["intent"]: float(r["conversations"]) for r in rows if r["stage"] == stage}
        ax.barh([i + j * height for i in range(len(intents))], [counts.get(i, 0) for i in intents], height=height, label=stage)
    ax.set_yticks([i + height * (len(stages) - 1) / 2 for i in range(len(intents))], intents)
    ax.set_xlabel("train conversations")
    ax.legend()
    ax.set_title("Intent distribution before / after balance")
    fig.tight_layout()
    return fig


def read_curves(folder: Path) -> dict[str, list[tuple[float, float]]]:
    """dvclive TSV curves (step, value) found under `folder`, keyed by metric path."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for path in sorted(folder.rglob("*.tsv")):
        with path.open(encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            name = path.relative_to(folder).with_suffix("").as_posix()
            value_col = [c for c in (reader.fieldnames or []) if c not in ("step", "timestamp")]
            if "step" not in (reader.fieldnames or []) or not value_col:
                continue
            curves[name] = [(float(r["step"]), float(r[value_col[0]])) for r in reader if r[value_col[0]] not in ("", "nan")]
    return curves


def plot_curves(curves: Mapping[str, list[tuple[float, float]]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {
        "loss": [k for k in curves if "loss" in k.rsplit("/", 1)[-1]],
        "perplexity": [k for k in curves if "perplexity" in k or "ppl" in k],
        "BLEU": [k for k in curves if "bleu" in k.lower()],
    }
    groups = {g: ks for g, ks in groups.items() if ks}
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.5), squeeze=False)
    for ax, (title, keys) in zip(axes[0], groups.items(), strict=False):
        for k in keys:
            xs, ys = zip(*curves[k], strict=True) if curves[k] else ((), ())
            ax.plot(xs, ys, label=k.rsplit("/", 1)[-1] if title != "loss" else k.split("/")[-2] + "/" + k.rsplit("/", 1)[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_variants(evaluation: Mapping[str, Any]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in VARIANTS if v in evaluation]
    quality_key = "bleu" if any("bleu" in evaluation[v] for v in names) else "accuracy"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key, title in zip(axes, (quality_key, "size_mb", "latency_p50_ms"), (quality_key, "size (MB)", "latency p50 (ms)"), strict=True):
        ax.bar(names, [_num(evaluation[v].get(key)) for v in names], color="#4c72b0")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0


# ------------------------------------------------------------------------------------------ sections
def headline_table(evaluation: Mapping[str, Any]) -> str:
    """Served variant vs the retrieval baseline vs the untrained base: what a user would notice."""
    served = evaluation.get("summary", {}).get("served_variant")
    rows = []
    for label, name in ((f"served ({served})", served), ("retrieval baseline", "retrieval"), ("base (untrained)", "base")):
        r = evaluation.get(name or "")
        if not r or "bleu_zh" not in r:
            continue
        rows.append([label, r.get("bleu_zh"), r.get("bleu_en"), r.get("chrf_zh"), r.get("chrf_en"),
                     r.get("slot_carry_zh"), r.get("slot_carry_en"), r.get("degenerate_rate_zh"), r.get("degenerate_rate_en"),
                     r.get("latency_p50_ms")])
    if not rows:
        return "_no answers were scored (classifier build, or evaluate has not run)._"
    summary = evaluation.get("summary", {})
    note = (f"Test assistant turns scored: {summary.get('samples_zh', '?')} zh, {summary.get('samples_en', '?')} en "
            f"(other variants: {summary.get('other_samples_zh', '?')} zh, {summary.get('other_samples_en', '?')} en).")
    return table(["", "BLEU zh", "BLEU en", "chrF zh", "chrF en", "slot carry zh", "slot carry en",
                  "degenerate zh", "degenerate en", "p50 ms"], rows) + "\n\n" + note


def calibration_table(evaluation: Mapping[str, Any]) -> str:
    """The served causal LM's confidence threshold: per threshold, the share of answers replaced by
    the fallback and the BLEU / slot carry of the answers still shown (keys calibration_tNNN_*)."""
    served = evaluation.get("summary", {}).get("served_variant")
    r = evaluation.get(served or "", {})
    thresholds = sorted({k.split("_")[1] for k in r if k.startswith("calibration_t")})
    if not thresholds:
        return "_no calibration (classifier build, an upstream served variant, or evaluate has not run)._"
    rows = [[f"{int(t[1:]) / 100:.2f}", *(r.get(f"calibration_{t}_{k}") for k in
                                          ("fallback_rate", "answered_bleu_zh", "answered_bleu_en", "answered_slot_carry"))]
            for t in thresholds]
    return table(["threshold", "fallback rate", "answered BLEU zh", "answered BLEU en", "answered slot carry"], rows)


def variant_table(evaluation: Mapping[str, Any]) -> str:
    names = [v for v in VARIANTS if v in evaluation]
    if not names:
        return "_evaluate has not run._"
    if any("bleu" in evaluation[v] for v in names):
        cols = ["bleu_zh", "bleu_en", "chrf", "exact_match", "slot_carry", "degenerate_rate", "perplexity_zh", "perplexity_en",
                "wrong_lang_zh", "wrong_lang_en", "params", "size_mb", "latency_p50_ms", "tokens_per_s"]
    else:
        cols = ["accuracy", "macro_f1", "fallback_rate", "answered_accuracy", "params", "size_mb", "latency_p50_ms", "latency_p95_ms"]
    return table(["variant", *cols], [[v, *(evaluation[v].get(c) for c in cols)] for v in names])


def generalisation_table(evaluation: Mapping[str, Any]) -> str:
    """Away from the test split's templates: paraphrase on-intent rate (new phrasings), and mode
    collapse on the test answers (top-answer share, distinct-2) per variant and for the references;
    a variant above the collapse limit (evaluate.gates.collapse_*) is flagged."""
    summary = evaluation.get("summary", {})
    gates = evaluation.get("gates", {})
    limits = {}
    for lang in ("zh", "en"):
        ref = summary.get(f"reference_top_answer_share_{lang}")
        floor = 0.05
        limits[lang] = max(floor, 1.5 * ref) if isinstance(ref, (int, float)) else floor
        text = str(gates.get(f"served_collapse_{lang}", {}).get("limit", ""))
        if text.startswith("<= "):  # the limit the gate used (its params), when evaluate wrote one
            limits[lang] = float(text[3:].split(" ")[0])
    names = [v for v in ("retrieval", *VARIANTS) if "bleu_zh" in evaluation.get(v, {})]
    if not names:
        return "_no answers were scored (classifier build, or evaluate has not run)._"
    rows = []
    for v in names:
        r = evaluation[v]
        flags = [lang for lang in ("zh", "en") if _num(r.get(f"top_answer_share_{lang}")) > limits[lang]]
        rows.append([v, r.get("paraphrase_on_intent_zh"), r.get("paraphrase_on_intent_en"),
                     r.get("top_answer_share_zh"), r.get("top_answer_share_en"), r.get("distinct_2_zh"),
                     r.get("distinct_2_en"), r.get("answered_by_retrieval"),
                     ("⚠️ collapsed (" + ", ".join(flags) + ")") if flags else "ok"])
    rows.append(["references", None, None, summary.get("reference_top_answer_share_zh"),
                 summary.get("reference_top_answer_share_en"), summary.get("reference_distinct_2_zh"),
                 summary.get("reference_distinct_2_en"), None, f"limit zh {limits['zh']:.3f}, en {limits['en']:.3f}"])
    note = (f"Paraphrase set: {summary.get('paraphrase_questions_zh', 0)} zh and {summary.get('paraphrase_questions_en', 0)} "
            "en questions none of which occur in the corpus; an answer is on-intent when its nearest training answer "
            "belongs to the question's intent (chatforge.evaluation.paraphrase). Answered by retrieval: the share of "
            "test answers below the confidence threshold replaced by a past answer (serve.hybrid).")
    return table(["variant", "on-intent zh", "on-intent en", "top answer zh", "top answer en", "distinct-2 zh",
                  "distinct-2 en", "by retrieval", "collapse"], rows) + "\n\n" + note


def paraphrase_section(details: Mapping[str, Any], *, per_lang: int = 5) -> str:
    """The first paraphrase questions per language with the served variant's and retrieval's answers."""
    questions = details.get("paraphrases", [])
    served = details.get("served_variant")
    variants = details.get("variants", {})
    mine = {name: {p["id"]: p for p in variants.get(name, {}).get("paraphrases", [])} for name in (served, "retrieval")}
    rows = []
    for lang in ("zh", "en"):
        for q in [q for q in questions if q["lang"] == lang][:per_lang]:
            for name in (served, "retrieval"):
                a = mine.get(name, {}).get(q["id"])
                if a:
                    rows.append([q["id"], q["intent"], q["question"], name, a["answer"], "✅" if a["on_intent"] else "❌"])
    return table(["id", "intent", "question", "variant", "answer", "on-intent"], rows) if rows else "_no paraphrase set._"


def gates_table(gates: Mapping[str, Mapping[str, Any]]) -> str:
    icon = {"pass": "✅ pass", "fail": "❌ fail", "warn": "⚠️ warn", "missing": "– not measured",
            "not_applicable": "– not applicable"}
    return table(["gate", "value", "limit", "result"], [[k, g.get("value"), g.get("limit"), icon.get(g.get("status"), g.get("status"))] for k, g in gates.items()])


def sample_section(details: Mapping[str, Any], *, n: int = 5) -> str:
    samples = details.get("samples", [])[:n]
    variants = details.get("variants", {})
    if not samples:
        return "_no samples recorded._"
    parts = []
    for i, s in enumerate(samples):
        prompt = " / ".join(f"**{m['role']}**: {fmt(m['content'])}" for m in s["prompt"][-3:])
        rows = [["reference", s["reference"]]]
        for name in VARIANTS:
            answers = variants.get(name, {}).get("answers")
            if answers and i < len(answers):
                rows.append([name, answers[i] or "(empty)"])
        parts.append(f"**{i + 1}. `{s['conversation_id']}`** ({s['lang']}, {s.get('intent') or 'no intent'})  \n{prompt}\n\n" + table(["", "answer"], rows))
    return "\n\n".join(parts)


def environment() -> str:
    rows = [["python", platform.python_version()], ["platform", platform.platform()],
            ["cpu", f"{platform.processor() or platform.machine()} × {os.cpu_count()}"]]
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # noqa: BLE001 - the report must render without torch
        gpu = "unknown"
    rows.append(["gpu", gpu])
    for pkg in PACKAGES:
        try:
            rows.append([pkg, metadata.version(pkg)])
        except metadata.PackageNotFoundError:
            continue
    return table(["", "version"], rows)


def provenance(lock_path: Path) -> str:
    if not lock_path.exists():
        return "_no dvc.lock yet._"
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    rows = []
    for stage, entry in (lock.get("stages") or {}).items():
        for dep in entry.get("deps", []):
            if dep["path"].startswith(("data/", "models/", "lexicons/")):
                rows.append([stage, "dep", dep["path"], (dep.get("md5") or "")[:12]])
        for out in entry.get("outs", []):
            rows.append([stage, "out", out["path"], (out.get("md5") or "")[:12]])
        params = entry.get("params", {})
        for file, values in params.items():
            rows.append([stage, "params", f"{file}: {', '.join(sorted(values))}", ""])
    return table(["stage", "kind", "path", "md5"], rows)


def load_timings(folder: Path) -> dict[str, float]:
    """Wall seconds per stage, as each stage script writes them (chatforge.stage.write_timings, the
    reports/timings/<stage>.json metrics dvc.yaml declares); stages without a file are left out."""
    out = {}
    for stage in STAGES:
        path = folder / f"{stage}.json"
        if path.exists():
            out[stage] = float(json.loads(path.read_text(encoding="utf-8"))["wall_seconds"])
    return out


def wall_times(timings: Mapping[str, float]) -> str:
    rows = [[s, timings[s]] for s in STAGES if s in timings]
    if not rows:
        return "_stages did not record wall times._"
    total = sum(r[1] for r in rows if isinstance(r[1], (int, float)))
    return table(["stage", "wall seconds"], [*rows, ["**total**", total]])


def render(
    reports: Mapping[str, Mapping[str, Any]],
    *,
    details: Mapping[str, Any],
    figures: Mapping[str, str],
    lock_path: Path,
    timings: Mapping[str, float] | None = None,
) -> str:
    """The whole report.md; `figures` maps a figure key to its path relative to the report."""
    ev = reports.get("evaluate", {})
    out = ["# chatforge build report", ""]
    summary = ev.get("summary", {})
    if summary:
        evaluated = ", ".join(v for v in VARIANTS if v in ev) or "none"
        out += [f"Variants evaluated: {evaluated}; missing: {summary.get('variants_missing', 'none')}; "
                + f"gates failed: {summary.get('gates_failed', 0)}.", ""]
    out += ["## Answers: served model vs retrieval baseline", "", headline_table(ev), ""]
    out += ["## Five test conversations", "", sample_section(details), ""]
    out += ["## Generalisation: new phrasings and mode collapse", "", generalisation_table(ev), ""]
    out += ["## Paraphrase questions (served variant and retrieval)", "", paraphrase_section(details), ""]
    out += ["## Confidence threshold (served variant; serve.confidence_threshold, serve.confidence_tokens)", "",
            calibration_table(ev), ""]
    out += ["## Gates", "", gates_table(ev["gates"]) if "gates" in ev else "_evaluate has not run._", ""]
    out += ["## Stage wall times", "", wall_times(timings or {}), ""]
    out += ["## Data", ""]
    out += ["### Ingest", "", key_values(reports["ingest"]) if "ingest" in reports else "_ingest has not run._", ""]
    out += ["### Clean (rows changed and conversations dropped per rule)", "", key_values(reports["clean"]) if "clean" in reports else "_clean has not run._", ""]
    out += ["### Split", "", key_values(reports["split"], exclude=("per_intent",)) if "split" in reports else "_split has not run._", ""]
    out += ["### Balance", ""]
    if "balance" in figures:
        out += [f"![intent distribution before and after balance]({figures['balance']})", ""]
    out += [key_values(reports["balance"]) if "balance" in reports else "_balance has not run._", ""]
    out += ["### Augmentation", "", key_values(reports["augment"], exclude=("examples",)) if "augment" in reports else "_augment has not run._", ""]
    out += ["## Training", ""]
    if "curves" in figures:
        out += [f"![training curves]({figures['curves']})", ""]
    for stage in ("translator", "train", "kto", "distill", "prune", "quantize"):
        if stage in reports:  # kto: preference training on the exported ratings (skipped, with the reason, without)
            out += [f"### {stage}", "", key_values(reports[stage], exclude=("rejects",)), ""]
    out += ["## Variants (test split)", ""]
    if "variants" in figures:
        out += [f"![variant comparison]({figures['variants']})", ""]
    out += [variant_table(ev), ""]
    out += ["## Environment", "", environment(), ""]
    out += ["## Provenance (dvc.lock)", "", provenance(lock_path), ""]
    return "\n".join(out)
