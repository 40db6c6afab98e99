"""evaluate's forgetting gates (issue 23): the new served model against the previous one, the promoted folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatforge.evaluation import evaluate as ev
from chatforge.evaluation.report import gates_table
from chatforge.params import EvaluateParams
from chatforge.runtime.folder import Manifest, ModelFolderError, write_manifest
from chatforge.runtime.promoted import REPORT_NAME, PromotedError, ServedScores, promote
from chatforge.runtime.quality import Sample

PREVIOUS = ev.Previous("models/served", ServedScores("int8", 70.0, 64.0, 0.99))
RETRIEVAL = {"bleu_zh": 60.0, "bleu_en": 55.0, "slot_carry": 0.9}


def forgetting(bleu_zh: float = 70.0, bleu_en: float = 64.0, carry: float = 0.99, *,
               previous: ev.Previous = PREVIOUS, params: EvaluateParams | None = None) -> dict[str, dict]:
    served = {"bleu_zh": bleu_zh, "bleu_en": bleu_en, "slot_carry": carry}
    gates = ev.compute_gates({"int8": served, "retrieval": RETRIEVAL}, {}, params or EvaluateParams(), served="int8",
                             previous=previous)
    return {k: v for k, v in gates.items() if k.startswith("forgetting_")}


def test_a_bleu_drop_above_one_point_fails_naming_the_language() -> None:
    gates = forgetting(bleu_zh=68.9)  # 70.0 -> 68.9: 1.1 points
    assert gates["forgetting_bleu_zh"]["status"] == "fail" and gates["forgetting_bleu_zh"]["value"] == pytest.approx(1.1)
    assert gates["forgetting_bleu_en"] == {"value": 0.0, "status": "pass", "limit": "<= 1.0 drop below the previous "
                                           "served model (BLEU en 64.00 -> 64.00; models/served)"}
    assert ev.gate_failures(gates) == [
        "gate forgetting_bleu_zh failed: 1.1, needs <= 1.0 drop below the previous served model (BLEU zh 70.00 -> "
        "68.90; models/served). Look at: " + ev.GATE_HINTS["forgetting"]]
    english = forgetting(bleu_en=62.5)  # 64.0 -> 62.5: 1.5 points in English
    assert [f.split(" failed")[0] for f in ev.gate_failures(english)] == ["gate forgetting_bleu_en"]


def test_a_drop_within_the_limit_passes() -> None:
    gates = forgetting(bleu_zh=69.1)  # 0.9 points
    assert gates["forgetting_bleu_zh"]["status"] == "pass" and gates["forgetting_bleu_zh"]["value"] == pytest.approx(0.9)
    assert forgetting(bleu_zh=69.0)["forgetting_bleu_zh"]["status"] == "pass"  # exactly 1.0: the limit is inclusive
    assert forgetting(bleu_zh=75.0)["forgetting_bleu_zh"]["value"] == pytest.approx(-5.0)  # better: a negative drop
    assert ev.gate_failures(forgetting(bleu_zh=69.1, bleu_en=63.5, carry=0.985)) == []


def test_slot_carry_drop() -> None:
    gates = forgetting(carry=0.975)  # 0.99 -> 0.975: 0.015 > 0.01
    assert gates["forgetting_slot_carry"]["status"] == "fail"
    assert ev.gate_failures(gates) == [
        "gate forgetting_slot_carry failed: 0.015, needs <= 0.01 drop below the previous served model (slot carry "
        "0.9900 -> 0.9750; models/served). Look at: " + ev.GATE_HINTS["forgetting"]]
    assert forgetting(carry=0.98)["forgetting_slot_carry"]["status"] == "pass"  # 0.01 (0.010000000000000009 in floats)
    loose = EvaluateParams(gates={"max_slot_carry_drop": 0.02, "max_bleu_drop": 2.0})
    assert ev.gate_failures(forgetting(bleu_zh=68.1, carry=0.975, params=loose)) == []


def test_a_fresh_build_is_not_applicable_and_passes(tmp_path: Path) -> None:
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}", encoding="utf-8")
    write_manifest(base, Manifest(family="causal_lm", variant="base"))
    previous = ev.read_previous(base)
    assert previous == ev.Previous(str(base), None, f"fresh build: nothing served before; {base} is not a promoted folder")
    gates = forgetting(bleu_zh=10.0, carry=0.1, previous=previous)  # nothing to compare with: any score passes
    assert {g["status"] for g in gates.values()} == {"not_applicable"} and ev.gate_failures(gates) == []
    assert gates["forgetting_bleu_zh"] == {"value": None, "status": "not_applicable", "limit": (
        f"<= 1.0 drop (fresh build: nothing served before; {base} is not a promoted folder)")}
    assert ev.previous_block({"bleu_zh": 10.0}, previous, samples_sha256="x") == {
        "folder": str(base), "applicable": False, "reason": previous.reason}
    assert "– not applicable" in gates_table(gates)
    # without --previous nothing is compared and no forgetting gate is recorded
    assert not [k for k in ev.compute_gates({"int8": {"bleu_zh": 1.0}}, {}, EvaluateParams(), served="int8")
                if k.startswith("forgetting")]


def test_no_served_scores_are_missing_not_failed() -> None:
    gates = ev.compute_gates({"int8": {"accuracy": 0.9}}, {}, EvaluateParams(), served="int8", previous=PREVIOUS)
    assert gates["forgetting_bleu_zh"]["status"] == "missing" and "-> ?" in gates["forgetting_bleu_zh"]["limit"]


def _promoted(tmp_path: Path, *, summary: dict | None = None) -> Path:
    """A promoted folder (chatforge promote) of a build with served BLEU 70.0 / 64.0 and slot carry 0.99."""
    for name, files in (("pruned", {"model.safetensors": b"w"}), ("onnx", {"model.int8.onnx": b"g"})):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}", encoding="utf-8")
        write_manifest(folder, Manifest(family="causal_lm", variant=name))
        for file, data in files.items():
            (folder / file).write_bytes(data)
    report = tmp_path / "reports" / "evaluate.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"summary": {"served_variant": "int8", **(summary or {})},
                                  "int8": {"bleu_zh": 70.0, "bleu_en": 64.0, "slot_carry": 0.99}}), encoding="utf-8")
    return promote(tmp_path / "models" / "pruned", tmp_path / "models" / "onnx", report, tmp_path / "models" / "served").root


def test_read_previous_from_a_promoted_folder(tmp_path: Path) -> None:
    root = _promoted(tmp_path, summary={"samples_sha256": "abc"})
    previous = ev.read_previous(root)
    assert previous == ev.Previous(str(root), ServedScores("int8", 70.0, 64.0, 0.99), samples_sha256="abc")
    block = ev.previous_block({"bleu_zh": 68.9, "bleu_en": 64.5, "slot_carry": 0.975}, previous, samples_sha256="abc")
    assert block == {"folder": str(root), "applicable": True, "served_variant": "int8", "same_test_samples": True,
                     "bleu_zh": 70.0, "bleu_en": 64.0, "slot_carry": 0.99, "delta_bleu_zh": pytest.approx(-1.1),
                     "delta_bleu_en": pytest.approx(0.5), "delta_slot_carry": pytest.approx(-0.015)}
    assert ev.previous_block({}, previous, samples_sha256="def")["same_test_samples"] is False
    older = ev.previous_block({}, ev.Previous("p", previous.scores), samples_sha256="def")
    assert older["same_test_samples"] is None and older["delta_bleu_zh"] is None  # a report from before the hash


def test_bad_previous_folders(tmp_path: Path) -> None:
    with pytest.raises(ev.EvaluationError, match=r"--previous .*nope does not exist: pass the promoted folder `chatforge "
                                                 r"promote` wrote \(models/served, with train\.init_from: served\) or "
                                                 r"models/base"):
        ev.read_previous(tmp_path / "nope")
    root = _promoted(tmp_path)
    (root / REPORT_NAME).write_text(json.dumps({"summary": {"served_variant": "int8"}, "int8": {"bleu_zh": 70.0}}),
                                    encoding="utf-8")
    with pytest.raises(PromotedError, match=r"evaluate\.json: the served variant 'int8' has no number bleu_en \(got None\): "
                                            r"only a causal-LM build scored on answers has served BLEU zh / en and slot "
                                            r"carry\. Promote a build whose evaluate scored them"):
        ev.read_previous(root)
    (root / REPORT_NAME).unlink()
    with pytest.raises(ModelFolderError, match=r"served is incomplete: it has no evaluate\.json; run `chatforge promote`"):
        ev.read_previous(root)


def test_samples_hash_names_the_test_turns() -> None:
    a = Sample("c1", "zh", None, [{"role": "user", "content": "你好"}], "您好")
    b = Sample("c2", "en", None, [{"role": "user", "content": "hi"}], "Hello")
    assert ev.samples_sha256([a, b]) == ev.samples_sha256([a, b]) != ev.samples_sha256([b, a])
    assert len(ev.samples_sha256([])) == 64
