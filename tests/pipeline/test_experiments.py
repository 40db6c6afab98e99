"""Issue 6 through the real dvc: the whole tiny pipeline, the report it renders, and experiments
compared with `dvc exp show` / `dvc metrics diff`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.pipeline

REPORT_SECTIONS = ["## Answers: served model vs retrieval baseline", "## Data", "### Ingest", "### Clean", "### Split", "### Balance", "### Augmentation", "## Training",
                   "## Variants (test split)", "## Gates", "## Five test conversations", "## Stage wall times",
                   "## Generalisation: new phrasings and mode collapse", "## Paraphrase questions (served variant and retrieval)",
                   "## Environment", "## Provenance (dvc.lock)"]


@pytest.fixture(scope="module")
def built(make_project):
    project = make_project()
    repro = project.repro()
    return project, repro


def test_full_tiny_pipeline_runs_every_stage(built):
    project, repro = built
    for stage in ("ingest", "clean", "split", "balance", "translator", "augment", "base", "train", "distill",
                  "prune", "quantize", "evaluate", "report"):
        assert stage in repro.reproduced, f"{stage} did not run:\n{repro.output[-3000:]}"
    metrics = json.loads((project.root / "reports" / "evaluate.json").read_text())
    for variant in ("retrieval", "base", "teacher", "student", "pruned", "int8"):
        assert variant in metrics, f"variant {variant} not evaluated: {metrics.get('summary')}"
        for key in ("bleu_zh", "bleu_en", "chrf_zh", "chrf_en", "exact_match", "slot_carry", "degenerate_rate",
                    "wrong_lang_zh", "wrong_lang_en"):
            assert key in metrics[variant], (variant, key)
    summary = metrics["summary"]
    assert summary["variants_missing"] == "none"
    assert summary["served_variant"] == "int8"  # serve.variants[0] is models/onnx
    assert summary["samples_zh"] == 4 and summary["samples_en"] == 4
    assert set(metrics["gates"]) >= {"served_bleu_zh", "served_bleu_en", "served_slot_carry", "served_degenerate_rate",
                                     "served_fallback_rate", "distill_retention", "prune_retention", "int8_retention", "int8_size_reduction",
                                     "served_paraphrase_on_intent_zh", "served_paraphrase_on_intent_en", "served_collapse_zh",
                                     "served_collapse_en"}
    # the paraphrase set is asked of every variant and of retrieval, judged by the same rule
    for variant in ("retrieval", "teacher", "int8"):
        for key in ("paraphrase_on_intent_zh", "paraphrase_on_intent_en", "top_answer_share_zh", "distinct_2_en"):
            assert 0.0 <= metrics[variant][key] <= 1.0, (variant, key)
    # the tiny profile's evaluate.max_paraphrases_per_lang: 14 of the set's 112 per language, one per intent
    assert summary["paraphrase_questions_zh"] == 14 and summary["paraphrase_questions_en"] == 14
    # the bars are lowered in the tiny profile, so nothing fails and the build passes
    assert summary["gates_failed"] == 0, metrics["gates"]


def test_default_answer_gates_fail_the_tiny_build_at_evaluate(built):
    """The tiny model answers badly: with the default bars (the profile's lowered ones removed),
    `dvc repro` fails at evaluate, naming the gate, the values and the params to look at."""
    project, _ = built
    project.set_param("evaluate.gates", {})
    done = project.run("repro", check=False)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-2000:]
    assert "Running stage 'evaluate'" in text and "Running stage 'report'" not in text
    assert "gate served_bleu_zh failed" in text, text[-3000:]
    assert "needs >= 1.0 x retrieval" in text and "train.max_steps" in text
    assert "evaluate.fail_on_gate: false" in text
    metrics = json.loads((project.root / "reports" / "evaluate.json").read_text())
    assert metrics["gates"]["served_bleu_zh"]["status"] == "fail"
    assert metrics["gates"]["served_slot_carry"]["limit"] == ">= 0.95"
    # lowering the bar again, visibly in params.yaml, lets the same models pass
    project.set_param("evaluate.gates", {"min_bleu_vs_retrieval": 0.0, "min_slot_carry": 0.0, "max_degenerate_rate": 1.0,
                                         "max_wrong_lang": 1.0, "min_retention": 0.01, "min_int8_size_reduction": 0.5,
                                         "max_fallback_rate": 1.0, "min_paraphrase_margin": -1.0, "collapse_floor": 1.0})
    again = project.repro()
    assert "evaluate" in again.ran and "train" not in again.ran


def test_report_renders_with_every_section_and_figure(built):
    project, _ = built
    report = project.root / "reports" / "report.md"
    text = report.read_text(encoding="utf-8")
    for section in REPORT_SECTIONS:
        assert section in text, section
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 3, images
    for rel in images:
        assert (report.parent / rel).is_file(), rel
    # stage wall times recorded by the stages themselves, for every stage that ran
    assert "| train |" in text.split("## Stage wall times")[1].split("##")[0]


def _experiments(show: Any) -> dict[str, dict[str, Any]]:
    """{experiment name: flattened metrics} from `dvc exp show --json` (dvc 3.x layout)."""
    found: dict[str, dict[str, Any]] = {}

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            out.update(flat(v, key) if isinstance(v, dict) else {key: v})
        return out

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("name")
            data = node.get("data")
            if name and isinstance(data, dict) and "metrics" in data:
                metrics: dict[str, Any] = {}
                for path, m in (data.get("metrics") or {}).items():
                    metrics.update({f"{path}:{k}": v for k, v in flat(m.get("data") or {}).items()})
                found[name] = metrics
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(show)
    return found


def test_experiments_are_listed_and_diffed(built):
    project, _ = built
    project.run("exp", "run", "-S", "train.lr=0.003", "-n", "lr-high")
    project.run("exp", "run", "-S", "train.lr=0.0003", "-n", "lr-low")
    exps = _experiments(json.loads(project.run("exp", "show", "--json").stdout))
    assert {"lr-high", "lr-low"} <= set(exps), sorted(exps)
    high, low = exps["lr-high"], exps["lr-low"]
    changed = [k for k in high if k in low and isinstance(high[k], float) and high[k] != low[k]]
    assert any(k.startswith("reports/train.json:") for k in changed), changed
    diff = json.loads(project.run("metrics", "diff", "lr-high", "lr-low", "--json").stdout)
    named = {f"{path}:{metric}" for path, rows in diff.items() for metric in rows}
    assert any(n.startswith("reports/train.json:") for n in named), named
    assert any(n.startswith("reports/evaluate.json:teacher.") for n in named), named


def test_editing_a_library_module_reruns_exactly_the_stages_that_import_it(built):
    """Issue 15 item 1: append a comment to the generation module; `dvc status` names exactly the
    stages whose script imports it (directly or through other modules), and no other."""
    from depgraph import import_closure

    project, _ = built
    assert project.status() == {}, "the tiny build should be up to date before the edit"
    module = "src/chatforge/runtime/decode.py"
    stages = yaml.safe_load((project.root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    importers = {name for name, spec in stages.items() if module in import_closure(project.root / spec["cmd"].split()[1])}
    assert {"distill", "prune", "quantize", "evaluate"} <= importers  # prune imports it too (the example)
    path = project.root / module
    original = path.read_text(encoding="utf-8")
    try:
        path.write_text(original + "\n# a comment\n", encoding="utf-8")
        assert set(project.status()) == importers
    finally:
        path.write_text(original, encoding="utf-8")
    assert project.status() == {}
