"""runtime/promoted.py and `chatforge promote`: the promoted folder (what is being served), kept across builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.io import sha256_tree
from chatforge.runtime.folder import Manifest, ModelFolderError, write_manifest
from chatforge.runtime.promoted import (
    MANIFEST_NAME,
    MODEL_DIR,
    ONNX_DIR,
    REPORT_NAME,
    PromotedError,
    ServedScores,
    is_promoted,
    open_promoted,
    previous_scores,
    promote,
    promoted_model,
)


def model_folder(root: Path, *, variant: str = "pruned", parent: str | None = None,
                 files: dict[str, bytes] | None = None) -> Path:
    """A model folder as the pipeline writes one (config.json, chatforge.json) with stand-in weight files."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}), encoding="utf-8")
    write_manifest(root, Manifest(family="causal_lm", variant=variant, parent=parent))
    for name, data in (files if files is not None else {"model.safetensors": b"float weights"}).items():
        (root / name).write_bytes(data)
    return root


def report(path: Path, *, served: str = "int8", bleu_zh: float = 70.43, bleu_en: float = 63.45, carry: float = 0.9925,
           models: dict[str, dict[str, str]] | None = None) -> Path:
    """An evaluate.json with the served variant's block (the committed reports/evaluate.json's shape)."""
    data: dict = {"summary": {"served_variant": served, "samples_zh": 150},
                  served: {"bleu_zh": bleu_zh, "bleu_en": bleu_en, "slot_carry": carry, "bleu": 66.9},
                  "retrieval": {"bleu_zh": 65.6, "bleu_en": 61.9, "slot_carry": 0.9}}
    if models is not None:
        data["models"] = models
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def build(tmp_path: Path) -> dict[str, Path]:
    """models/pruned, models/onnx (quantized from it) and reports/evaluate.json of one build, in tmp_path."""
    pruned = model_folder(tmp_path / "models" / "pruned")
    onnx = model_folder(tmp_path / "models" / "onnx", variant="int8", parent="models/pruned",
                        files={"model.onnx": b"graph", "model.int8.onnx": b"int8 graph", "tokenizer.json": b"{}"})
    models = {"int8": {"folder": "models/onnx", "sha256": sha256_tree(onnx)},
              "pruned": {"folder": "models/pruned", "sha256": sha256_tree(pruned)}}
    return {"model": pruned, "onnx": onnx, "report": report(tmp_path / "reports" / "evaluate.json", models=models),
            "to": tmp_path / "models" / "served"}


def test_promote_writes_the_layout_and_manifest(build: dict[str, Path]) -> None:
    done = promote(build["model"], build["onnx"], build["report"], build["to"])
    root = build["to"]
    assert (done.root, done.model, done.onnx, done.report) == (root, root / MODEL_DIR, root / ONNX_DIR, root / REPORT_NAME)
    assert sorted(p.name for p in root.iterdir()) == ["evaluate.json", "model", "onnx", "promoted.json"]
    assert (root / "onnx" / "model.int8.onnx").read_bytes() == b"int8 graph"
    assert (root / "model" / "model.safetensors").read_bytes() == b"float weights"
    assert (root / REPORT_NAME).read_bytes() == build["report"].read_bytes()
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["model_sha256"] == sha256_tree(build["model"]) == sha256_tree(root / "model")
    assert manifest["onnx_sha256"] == sha256_tree(build["onnx"])
    assert {k: manifest[k] for k in ("model_source", "onnx_source", "report_source", "served_variant", "bleu_zh",
                                     "bleu_en", "slot_carry")} == {
        "model_source": str(build["model"]), "onnx_source": str(build["onnx"]), "report_source": str(build["report"]),
        "served_variant": "int8", "bleu_zh": 70.43, "bleu_en": 63.45, "slot_carry": 0.9925}
    assert manifest["promoted_at"].endswith("+00:00")
    assert open_promoted(root, verify_hashes=True) == done
    assert promoted_model(root) == root / "model" and is_promoted(root)
    assert [p.name for p in root.parent.iterdir() if p.name.startswith(".")] == []  # no temporary sibling left


def test_promote_replaces_the_previous_promoted_folder(build: dict[str, Path]) -> None:
    promote(build["model"], build["onnx"], build["report"], build["to"])
    (build["model"] / "model.safetensors").write_bytes(b"round 2 weights")
    report(build["report"], bleu_zh=71.0)  # the next build's report (no models block: an older report's shape)
    done = promote(build["model"], build["onnx"], build["report"], build["to"])
    assert done.manifest.bleu_zh == 71.0 and (build["to"] / "model" / "model.safetensors").read_bytes() == b"round 2 weights"
    assert previous_scores(build["to"] / REPORT_NAME) == ServedScores("int8", 71.0, 63.45, 0.9925)


def test_promote_refuses_bad_sources_and_writes_nothing(build: dict[str, Path], tmp_path: Path) -> None:
    m, o, r, to = build["model"], build["onnx"], build["report"], build["to"]
    with pytest.raises(ModelFolderError, match=r"model folder .*nope does not exist\. Build it first"):
        promote(tmp_path / "nope", o, r, to)
    with pytest.raises(PromotedError, match=r"onnx has no \*\.safetensors weights: the promoted model must be the float "
                                            r"torch folder .*models/<quantize\.source>"):
        promote(o, o, r, to)
    with pytest.raises(PromotedError, match=r"pruned has no model\.int8\.onnx or model\.onnx: .*models/onnx; `dvc repro quantize`"):
        promote(m, m, r, to)
    with pytest.raises(PromotedError, match=r"missing\.json not found \(an evaluate report expected there\); run `dvc repro evaluate`, "
                                            r"then `chatforge promote`"):
        promote(m, o, tmp_path / "missing.json", to)
    with pytest.raises(PromotedError, match=r"the promoted folder .* and the source .*onnx overlap: promote replaces the "
                                            r"whole target folder"):
        promote(m, o, r, o)
    with pytest.raises(PromotedError, match="overlap"):
        promote(m, o, r, tmp_path / "models")  # a parent of the sources
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(PromotedError, match=r"keep exists and is not a promoted folder \(no promoted\.json\): promote "
                                            r"replaces only a folder it wrote"):
        promote(m, o, r, tmp_path / "keep")
    assert not to.exists() and (tmp_path / "keep" / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_promote_refuses_a_report_from_another_build(build: dict[str, Path]) -> None:
    promote(build["model"], build["onnx"], build["report"], build["to"])
    before = sha256_tree(build["to"])
    (build["onnx"] / "model.int8.onnx").write_bytes(b"re-quantized, not evaluated")
    with pytest.raises(PromotedError, match=r"onnx is not the folder .*evaluate\.json measured as models/onnx \(sha256 "
                                            r"[0-9a-f]{12}\.\.\., the report has [0-9a-f]{12}\.\.\.\): the models and the "
                                            r"report come from different builds\. Run `dvc repro`"):
        promote(build["model"], build["onnx"], build["report"], build["to"])
    (build["onnx"] / "model.int8.onnx").write_bytes(b"int8 graph")
    (build["model"] / "model.safetensors").write_bytes(b"pruned again")
    with pytest.raises(PromotedError, match=r"pruned is not the folder .* measured as models/pruned"):
        promote(build["model"], build["onnx"], build["report"], build["to"])
    assert sha256_tree(build["to"]) == before  # the promoted folder is untouched


def test_previous_scores_and_its_errors(tmp_path: Path) -> None:
    assert previous_scores(report(tmp_path / "a.json")) == ServedScores("int8", 70.43, 63.45, 0.9925)
    classifier = tmp_path / "clf.json"
    classifier.write_text(json.dumps({"summary": {"served_variant": "int8"}, "int8": {"accuracy": 0.9}}), encoding="utf-8")
    with pytest.raises(PromotedError, match=r"clf\.json: the served variant 'int8' has no number bleu_zh \(got None\): "
                                            r"only a causal-LM build .* `chatforge promote`"):
        previous_scores(classifier)
    upstream = tmp_path / "up.json"
    upstream.write_text(json.dumps({"summary": {"served_variant": "none"}}), encoding="utf-8")
    with pytest.raises(PromotedError, match=r"names no evaluated served variant \(summary\.served_variant is 'none'\)"):
        previous_scores(upstream)
    nan = tmp_path / "nan.json"
    nan.write_text('{"summary": {"served_variant": "int8"}, "int8": {"bleu_zh": NaN, "bleu_en": 1, "slot_carry": 1}}',
                   encoding="utf-8")
    with pytest.raises(PromotedError, match="has no number bleu_zh"):
        previous_scores(nan)
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(PromotedError, match=r"list\.json is not an evaluate report \(a JSON list, not an object\)"):
        previous_scores(tmp_path / "list.json")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(PromotedError, match=r"broken\.json is not an evaluate report \(not JSON: .* at line 1\)"):
        previous_scores(tmp_path / "broken.json")
    deep = tmp_path / ("a" * 120) / ("b" * 120) / "evaluate.json"
    with pytest.raises(PromotedError) as info:
        previous_scores(deep)
    assert "..." in str(info.value) and str(deep) not in str(info.value)  # a long path is cut, not echoed


def test_open_promoted_says_to_run_promote(build: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"promoted folder .*served does not exist: nothing has been promoted there "
                                               r"yet; run `chatforge promote`"):
        open_promoted(build["to"])
    with pytest.raises(ModelFolderError, match=r"pruned is not a promoted folder: it has no promoted\.json; run "
                                               r"`chatforge promote`"):
        promoted_model(build["model"])
    promote(build["model"], build["onnx"], build["report"], build["to"])
    (build["to"] / MANIFEST_NAME).write_text(json.dumps({"promoted_at": "x"}), encoding="utf-8")
    with pytest.raises(ModelFolderError, match=r"promoted\.json is not a promote manifest \(model_source: Field required\); "
                                               r"run `chatforge promote`"):
        open_promoted(build["to"])
    promote(build["model"], build["onnx"], build["report"], build["to"])
    (build["to"] / "onnx" / "model.int8.onnx").write_bytes(b"edited by hand")
    open_promoted(build["to"])  # the layout is fine; only the hash check sees the edit
    with pytest.raises(ModelFolderError, match=r"onnx changed since it was promoted .*run `chatforge promote`"):
        open_promoted(build["to"], verify_hashes=True)
    (build["to"] / "onnx" / "model.int8.onnx").unlink()
    (build["to"] / "onnx" / "model.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"promoted folder .*served is incomplete: .*has no model\.int8\.onnx or "
                                               r"model\.onnx.*run `chatforge promote`"):
        open_promoted(build["to"])


def test_promote_command(build: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the defaults are relative to the project root: models/..., reports/...
    params = tmp_path / "params.yaml"
    params.write_text("quantize:\n  source: pruned\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["promote", "--params", str(params)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == ("promoted models/pruned + models/onnx (int8: BLEU zh 70.43 / en 63.45, slot carry 0.9925) "
                        "to models/served:")
    assert lines[1].startswith("  models/served/model  (float model, sha256 ")
    assert lines[3:] == ["  models/served/evaluate.json  (copy of reports/evaluate.json)",
                         "  models/served/promoted.json  (manifest)"]
    assert open_promoted("models/served").manifest.model_source == "models/pruned"
    params.write_text("quantize:\n  source: teacher\n", encoding="utf-8")  # quantize.source picks the float folder
    missing = CliRunner().invoke(app, ["promote", "--params", str(params)])
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert "promote: model folder models/teacher does not exist" in missing.output
    again = CliRunner().invoke(app, ["promote", "--params", str(params), "--model", "models/pruned", "--to", "elsewhere"])
    assert again.exit_code == 0, again.output and (tmp_path / "elsewhere" / "promoted.json").is_file()
    bad = CliRunner().invoke(app, ["promote", "--params", str(tmp_path / "nope.yaml")])
    assert bad.exit_code == 2 and "params file not found" in bad.output


def test_the_promoted_model_loads_like_any_model_folder(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """train.init_from: served trains from promoted_model(root): an ordinary folder for runtime.folder.load_torch."""
    import shutil

    import torch

    from chatforge.runtime.folder import load_torch

    shutil.copytree(tiny_causal_lm, tmp_path / "models" / "pruned")
    onnx = model_folder(tmp_path / "models" / "onnx", variant="int8", files={"model.int8.onnx": b"graph"})
    done = promote(tmp_path / "models" / "pruned", onnx, report(tmp_path / "evaluate.json"), tmp_path / "models" / "served")
    model, tokenizer, family = load_torch(promoted_model(done.root))
    source, _, _ = load_torch(tiny_causal_lm)
    assert family == "causal_lm" and len(tokenizer) == source.config.vocab_size
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values(), strict=True))
