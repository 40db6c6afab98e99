"""Issue 6 through the real dvc: the whole tiny pipeline, the report it renders, and experiments
compared with `dvc exp show` / `dvc metrics diff`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

pytestmark = pytest.mark.pipeline

REPORT_SECTIONS = ["## Data", "### Ingest", "### Clean", "### Split", "### Balance", "### Augmentation", "## Training",
                   "## Variants (test split)", "## Gates", "## Five test conversations", "## Stage wall times",
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
    for variant in ("base", "teacher", "student", "pruned", "int8"):
        assert variant in metrics, f"variant {variant} not evaluated: {metrics.get('summary')}"
    assert metrics["summary"]["variants_missing"] == "none"
    assert set(metrics["gates"]) >= {"train_val_gap", "teacher_perplexity_band", "distill_retention", "int8_size_reduction"}


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
