"""Issue 15 item 11: the classifier family through the real dvc, on the tiny profile, with the
default variant list: the untouched base encoder is skipped with its reason, every trained variant
is scored per language, and the size-like knobs are stated."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline


def test_tiny_classifier_build_evaluates_per_language_and_skips_the_base(make_project):
    project = make_project()
    project.set_param("model.family", "classifier")  # model.base stays scratch: a tokenizer that reads zh and en
    # the gates are recorded, not enforced: this test is about what evaluate reports
    project.set_param("evaluate.fail_on_gate", False)
    assert project.param("evaluate.variants") is None  # the default list: base, teacher, student, pruned, int8
    repro = project.repro("evaluate")
    assert "evaluate" in repro.reproduced, repro.output[-3000:]
    metrics = json.loads((project.root / "reports" / "evaluate.json").read_text())
    assert metrics["summary"]["variants_skipped"] == "base"
    assert "base" not in metrics
    assert "has no classification head and no responses.json" in metrics["skipped"]["base"]
    assert "evaluate.variants" in metrics["skipped"]["base"]
    for variant in ("teacher", "student", "pruned", "int8"):
        for key in ("accuracy", "accuracy_zh", "accuracy_en", "fallback_rate_zh", "fallback_rate_en",
                    "conversations_zh", "conversations_en"):
            assert key in metrics[variant], (variant, key)
        assert metrics[variant]["conversations_zh"] > 0 and metrics[variant]["conversations_en"] > 0
    assert metrics["summary"]["served_variant"] == "int8"
    quantize = json.loads((project.root / "reports" / "quantize.json").read_text())
    assert set(quantize["gates"]) == {"size_ratio", "top1_agreement"} and quantize["embeddings_quantized"] >= 1
    base = json.loads((project.root / "reports" / "base.json").read_text())
    assert base["knobs"]["model.scratch.vocab_size"]["requested"] == 600
    assert base.get("unk_rate_zh", 0.0) == 0.0
    prune = json.loads((project.root / "reports" / "prune.json").read_text())
    assert prune["knobs"]["prune.ratio (MLP channels)"]["reached"] == prune["mlp_removed_share"]
    print(json.dumps({v: {k: metrics[v][k] for k in ("accuracy", "accuracy_zh", "accuracy_en", "fallback_rate_zh",
                                                     "fallback_rate_en", "size_mb")} for v in ("teacher", "student", "pruned", "int8")},
                     indent=1))
    print(json.dumps({"quantize": {k: quantize[k] for k in ("float_mb", "int8_mb", "size_ratio", "top1_agreement")},
                      "base_knobs": base["knobs"], "prune_knobs": prune["knobs"], "evaluate_knobs": metrics["knobs"]}, indent=1))
