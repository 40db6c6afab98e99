import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from chatforge.evaluation import report

SECTIONS = ["## Answers: served model vs retrieval baseline", "## Data", "### Ingest", "### Clean", "### Balance", "### Augmentation", "## Training",
            "## Variants (test split)", "## Gates", "## Five test conversations", "## Stage wall times",
            "## Environment", "## Provenance (dvc.lock)"]


def write_inputs(root: Path) -> None:
    reports = root / "reports"
    (reports / "plots").mkdir(parents=True)
    (reports / "ingest.json").write_text(json.dumps({"conversations": 10, "rejects": {"malformed_json": 1}}))
    (reports / "clean.json").write_text(json.dumps({"rows_changed": {"html": 3}}))
    (reports / "timings").mkdir()
    (reports / "timings" / "ingest.json").write_text(json.dumps({"stage": "ingest", "wall_seconds": 1.5}))
    (reports / "timings" / "clean.json").write_text(json.dumps({"stage": "clean", "wall_seconds": 2.0}))
    (reports / "balance.json").write_text(json.dumps({"imbalance_before": 0.8, "imbalance_after": 0.15}))
    (reports / "plots" / "balance.csv").write_text("intent,stage,conversations\nweather,before,10\nweather,after,8\nrefund,before,2\nrefund,after,7\n")
    curves = reports / "train" / "plots" / "metrics"
    (curves / "train").mkdir(parents=True)
    (curves / "train" / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t0\t3.0\n0\t10\t2.0\n")
    (curves / "val").mkdir()
    (curves / "val" / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t10\t2.2\n")
    (curves / "val" / "bleu.tsv").write_text("timestamp\tstep\tbleu\n0\t10\t5.5\n")
    gates = {"train_val_gap": {"value": 0.2, "limit": "<= 0.1", "status": "fail"}}
    (reports / "evaluate.json").write_text(json.dumps({
        "teacher": {"bleu": 12.5, "bleu_zh": 15.0, "bleu_en": 10.0, "size_mb": 500.0, "latency_p50_ms": 300.0},
        "int8": {"bleu": 12.0, "bleu_zh": 14.0, "bleu_en": 10.0, "chrf_zh": 20.0, "chrf_en": 30.0, "slot_carry_zh": 1.0,
                 "slot_carry_en": 0.5, "degenerate_rate_zh": 0.0, "degenerate_rate_en": 0.25, "size_mb": 140.0,
                 "latency_p50_ms": 120.0},
        "retrieval": {"bleu": 13.0, "bleu_zh": 16.0, "bleu_en": 9.5, "chrf_zh": 21.0, "chrf_en": 29.0, "slot_carry_zh": 0.25,
                      "slot_carry_en": 0.0, "degenerate_rate_zh": 0.0, "degenerate_rate_en": 0.0, "latency_p50_ms": 0.5},
        "gates": gates, "summary": {"variants_missing": "student,pruned", "gates_failed": 1, "served_variant": "int8",
                                    "samples_zh": 4, "samples_en": 4, "other_samples_zh": 4, "other_samples_en": 4},
    }))
    details = {"samples": [{"conversation_id": "demo:c1", "lang": "zh", "intent": "weather",
                            "prompt": [{"role": "user", "content": "查询北京天气"}], "reference": "今日北京晴"}],
               "variants": {"teacher": {"answers": ["北京晴"]}, "int8": {"answers": ["北京晴天"]}}}
    (reports / "evaluate_details.json").write_text(json.dumps(details, ensure_ascii=False))
    lock = {"schema": "2.0", "stages": {"clean": {"cmd": "x", "deps": [{"path": "data/turns.parquet", "md5": "abc123def4567890"}],
                                                  "params": {"params.yaml": {"clean": {"nfkc": True}}},
                                                  "outs": [{"path": "data/clean.parquet", "md5": "0123456789abcdef"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_report_stage_renders_every_section_and_figure(tmp_path, repo_root):
    write_inputs(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "report.py"), "reports", "reports/evaluate_details.json",
         "reports/plots/balance.csv", "reports/train", "dvc.lock", "reports/report.md", "reports/figures"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "reports" / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in text, section
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(images) == ["figures/balance.png", "figures/training.png", "figures/variants.png"]
    for rel in images:
        assert (tmp_path / "reports" / rel).stat().st_size > 1000
    assert "❌ fail" in text and "missing: student,pruned" in text
    # the report leads with the answers: served vs retrieval, then the five conversations
    assert text.index("## Answers") < text.index("## Five test conversations") < text.index("## Data")
    assert "| served (int8) | 14 | 10 | 20 | 30 | 1 | 0.5 | 0 | 0.25 | 120.0 |" in text
    assert "| retrieval baseline | 16 | 9.5 | 21 | 29 | 0.25 | 0 | 0 | 0 | 0.5 |" in text
    assert "| teacher | 北京晴 |" in text and "| reference | 今日北京晴 |" in text
    assert "| clean | out | data/clean.parquet | 0123456789ab |" in text
    assert "| **total** | 3.5 |" in text


def test_report_renders_a_partial_pipeline():
    text = report.render({}, details={}, figures={}, lock_path=Path("/nonexistent/dvc.lock"))
    assert "_ingest has not run._" in text and "_evaluate has not run._" in text and "_no dvc.lock yet._" in text


def test_fmt_and_table():
    assert report.fmt(float("nan")) == "–" and report.fmt(1234567) == "1,234,567" and report.fmt(0.12345) == "0.123"
    assert report.table(["a", "b"], [[1, "x|y"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |"


def test_the_kto_stage_has_its_section_with_counts_and_without_the_reject_rows():
    kto = {"skipped": False, "desirable": 3, "undesirable": 2, "rejected": 1,
           "rejects": [{"line": 4, "reason": "bad_label"}], "final_loss": 0.25}
    text = report.render({"train": {"steps": 10}, "kto": kto, "distill": {"steps": 5}}, details={}, figures={},
                         lock_path=Path("/nonexistent/dvc.lock"))
    section = text[text.index("### kto"):text.index("### distill")]
    assert text.index("### train") < text.index("### kto") < text.index("### distill")
    assert "| desirable | 3 |" in section and "| undesirable | 2 |" in section and "| final_loss | 0.25 |" in section
    assert "bad_label" not in section  # the reject rows stay in reports/kto.json; their count is shown
    assert "| rejected | 1 |" in section
