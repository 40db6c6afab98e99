"""runtime/folder.py: the one check that a folder is a usable model folder, and its family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatforge.runtime.folder import (
    MANIFEST_NAME,
    Manifest,
    ModelFolderError,
    open_folder,
    read_family,
    read_manifest,
    write_manifest,
)


def model_folder(root: Path, *, manifest: str | None = None, architectures: tuple[str, ...] = ("LlamaForCausalLM",)) -> Path:
    """A folder with config.json and, unless `manifest` is given as text, a causal-LM chatforge.json."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"architectures": list(architectures)}), encoding="utf-8")
    if manifest is None:
        write_manifest(root, Manifest(family="causal_lm", variant="teacher"))
    else:
        (root / MANIFEST_NAME).write_text(manifest, encoding="utf-8")
    return root


def test_a_good_folder_gives_its_family(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "teacher")
    assert read_family(folder) == "causal_lm"
    assert read_family(folder, key="prune.source", plain_ok=True) == "causal_lm"
    assert open_folder(folder) == Manifest(family="causal_lm", variant="teacher")
    classifier = model_folder(tmp_path / "clf", manifest=json.dumps({"family": "classifier", "variant": "base"}))
    assert read_family(str(classifier)) == "classifier"


def test_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"^prune\.source: model folder .*nope does not exist\. Build it first "
                                               r"\(`dvc repro`\) or change prune\.source\.$"):
        read_family(tmp_path / "nope", key="prune.source")
    with pytest.raises(ModelFolderError, match=r"model folder .*nope does not exist\. .*point at a folder the pipeline wrote \(models/teacher"):
        open_folder(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="does not exist"):
        read_family(tmp_path / "nope", plain_ok=True)


def test_a_folder_without_chatforge_json(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}), encoding="utf-8")
    with pytest.raises(ModelFolderError, match=r"^quantize\.source: .*plain is not a model folder: it has no chatforge\.json\. "
                                               r"Point at a folder the pipeline wrote \(models/teacher.*\) or build it with `dvc repro`\.$"):
        open_folder(folder, key="quantize.source")
    with pytest.raises(ModelFolderError, match="is not a model folder: it has no chatforge.json"):
        read_manifest(folder)
    # a plain transformers folder is accepted where a user's own model is (generation, serving, GGUF export)
    assert read_family(folder, plain_ok=True) == "classifier"
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}), encoding="utf-8")
    assert read_family(folder, plain_ok=True) == "causal_lm"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="is not a model folder: it has no config.json and no chatforge.json"):
        read_family(tmp_path / "empty", plain_ok=True)


def test_a_manifest_with_an_unknown_family(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "odd", manifest=json.dumps({"family": "seq2seq", "variant": "teacher"}))
    with pytest.raises(ModelFolderError, match=r"chatforge\.json: family 'seq2seq' is not one of causal_lm, classifier, "
                                               r"translator\. Rebuild the folder with `dvc repro` or change distill\.source"):
        read_family(folder, key="distill.source")
    long = model_folder(tmp_path / "long", manifest=json.dumps({"family": "x" * 5000, "variant": "teacher"}))
    with pytest.raises(ModelFolderError) as err:
        open_folder(long)
    assert "x" * 40 + "..." in str(err.value) and "x" * 41 not in str(err.value)  # never the whole value


def test_a_manifest_that_is_not_json(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "broken", manifest="{family: causal_lm")
    with pytest.raises(ModelFolderError, match=r"broken/chatforge\.json is not JSON \(Expecting property name enclosed in "
                                               r"double quotes at line 1, column 2\)\. Rebuild the folder with `dvc repro`\.$"):
        read_family(folder)
    (folder / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelFolderError, match=r"is not JSON \(not UTF-8 text\)"):
        open_folder(folder)


def test_a_manifest_missing_a_field_names_the_field(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "partial", manifest=json.dumps({"family": "causal_lm"}))
    with pytest.raises(ModelFolderError, match=r"is not a chatforge manifest \(variant: Field required\)"):
        read_family(folder)
    (folder / MANIFEST_NAME).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ModelFolderError, match="is not a chatforge manifest"):
        read_family(folder)


def test_the_error_is_a_value_error() -> None:
    assert issubclass(ModelFolderError, ValueError)
