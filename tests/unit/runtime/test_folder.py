"""runtime/folder.py: the one check that a folder is a usable model folder, and its family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatforge.runtime.folder import (
    MANIFEST_NAME,
    Manifest,
    ModelFolderError,
    derived_manifest,
    load_torch,
    open_folder,
    publish_folder,
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


class _Saves:
    """Stands in for a model, config or tokenizer: save_pretrained writes one named file."""

    def __init__(self, name: str, text: str = "x") -> None:
        self.name, self.text = name, text

    def save_pretrained(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / self.name).write_text(self.text, encoding="utf-8")


class _Fails(_Saves):
    def save_pretrained(self, folder: Path) -> None:
        raise RuntimeError("disk full")


def test_publish_folder_writes_weights_tokenizer_carried_files_and_manifest_last(tmp_path: Path) -> None:
    from chatforge.runtime.conversation import Conversation
    from chatforge.runtime.index import read_index

    parent = tmp_path / "teacher"
    exchanges = [Conversation("c2", "en", "x", [{"role": "user", "content": "hi"}]),
                 Conversation("c1", "zh", None, [{"role": "user", "content": "你好"}])]
    publish_folder(parent, Manifest(family="classifier", variant="teacher", details={"a": 1}),
                   model=_Saves("model.safetensors"), tokenizer=_Saves("tokenizer.json"),
                   responses={"greet": {"zh": "你好", "en": "hello"}}, exchanges=exchanges)
    assert sorted(p.name for p in parent.iterdir()) == [MANIFEST_NAME, "model.safetensors", "responses.json",
                                                        "retrieval.jsonl", "tokenizer.json"]
    assert json.loads((parent / "responses.json").read_text(encoding="utf-8")) == {"greet": {"zh": "你好", "en": "hello"}}
    assert [c.conversation_id for c in read_index(parent)] == ["c1", "c2"]
    # a derived folder: the parent's manifest with its own variant and details, the parent's files carried
    child = tmp_path / "int8"
    child.mkdir()
    (child / "model.onnx").write_bytes(b"graph")  # in_place: the caller already wrote into the folder it builds
    publish_folder(child, derived_manifest(parent, variant="int8", details={"quantize": {"scheme": "w8"}}),
                   tokenizer=_Saves("tokenizer.json"), config=_Saves("config.json"), carry_from=parent, in_place=True)
    manifest = read_manifest(child)
    assert (manifest.family, manifest.variant, manifest.parent) == ("classifier", "int8", str(parent))
    assert manifest.details == {"a": 1, "quantize": {"scheme": "w8"}}
    assert (child / "model.onnx").read_bytes() == b"graph" and not (child / "model.safetensors").exists()
    assert (child / "responses.json").read_bytes() == (parent / "responses.json").read_bytes()
    assert (child / "retrieval.jsonl").read_bytes() == (parent / "retrieval.jsonl").read_bytes()


def test_publish_folder_is_atomic(tmp_path: Path) -> None:
    """A failure while writing leaves the published folder as it was (no half-written model)."""

    out = tmp_path / "student"
    publish_folder(out, Manifest(family="causal_lm", variant="student"), model=_Saves("model.safetensors", "v1"),
                   tokenizer=_Saves("tokenizer.json"))
    with pytest.raises(RuntimeError, match="disk full"):
        publish_folder(out, Manifest(family="causal_lm", variant="student"), model=_Saves("model.safetensors", "v2"),
                       tokenizer=_Fails("tokenizer.json"))
    assert (out / "model.safetensors").read_text(encoding="utf-8") == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temporary sibling left behind


def test_load_torch_picks_the_class_by_family_and_loads_float32_in_eval_mode(tiny_causal_lm: Path, tiny_classifier: Path) -> None:
    import torch

    model, tokenizer, family = load_torch(tiny_causal_lm)
    assert family == "causal_lm" and type(model).__name__.endswith("ForCausalLM")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert tokenizer.chat_template
    model, given, family = load_torch(tiny_classifier, tokenizer=tokenizer)
    assert family == "classifier" and type(model).__name__.endswith("ForSequenceClassification")
    assert given is tokenizer  # a tokenizer the caller loaded is used as it is


def test_load_torch_checks_the_folder_first(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"quantize\.source: model folder .* does not exist"):
        load_torch(tmp_path / "missing", key="quantize.source")
    with pytest.raises(ModelFolderError, match="no chatforge.json"):
        load_torch(_plain(tmp_path / "plain"))  # a plain transformers folder only with plain_ok


def _plain(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}), encoding="utf-8")
    return root
