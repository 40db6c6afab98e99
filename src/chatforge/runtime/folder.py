"""A built model folder: its manifest (`chatforge.json`), its family, and the check that it is one.

A model folder is an ordinary transformers folder (config.json, model.safetensors, tokenizer files,
chat template) plus this manifest. Classifier folders also carry `responses.json`
({intent: {"zh": answer, "en": answer}}) and their labels in config.id2label.
ONNX folders add model.onnx / model.int8.onnx next to the tokenizer.

Every stage, evaluate and serving open a folder through `open_folder` / `read_family` and load
its torch weights through `load_torch`; a folder that is not a usable model folder raises one error,
`ModelFolderError`, whose message says what is wrong and how to fix it. Every stage that builds a model (base, train, distill, prune, quantize)
writes it through `publish_folder`; a derived folder's manifest is `derived_manifest` of its parent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_NAME = "chatforge.json"
CONFIG_NAME = "config.json"
# what a derived folder takes over from its parent: a classifier's answers, a chat model's exchanges
# (retrieval in the loop, chatforge.runtime.index.INDEX_NAME)
CARRIED_FILES = ("responses.json", "retrieval.jsonl")
Family = Literal["causal_lm", "classifier", "translator"]
FAMILIES: tuple[str, ...] = get_args(Family)
# where a message points when a folder is not usable
PIPELINE_FOLDERS = "models/teacher, models/student, models/pruned, models/onnx"
SHOWN_CHARS = 200  # a path or value quoted in a message is cut here: messages never echo unbounded input


class ModelFolderError(ValueError):
    """A folder is not a usable model folder; the message says what is wrong and how to fix it."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    family: Family
    variant: str  # base | teacher | student | pruned | int8 | ...
    parent: str | None = None  # the folder (or hub id / package) it was derived from
    base: str | None = None  # the model.base value it started from
    data_sha256: str | None = None  # hash of the data it was trained on
    params_sha256: str | None = None  # hash of the params sections that shaped it
    details: dict[str, Any] = Field(default_factory=dict)


def _shown(value: object, limit: int = SHOWN_CHARS) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _prefix(key: str | None) -> str:
    return f"{key}: " if key else ""


def _rebuild(key: str | None) -> str:
    return f"Rebuild the folder with `dvc repro`{f' or change {key}' if key else ''}."


def read_manifest(folder: Path | str, *, key: str | None = None) -> Manifest:
    """The folder's `chatforge.json`. `key` (the params key that chose the folder) starts every message.

    Raises ModelFolderError when the file is missing, is not JSON, names an unknown family or is
    not a manifest."""
    path = Path(folder) / MANIFEST_NAME
    p, where = _prefix(key), _shown(path)
    if not path.exists():
        raise ModelFolderError(
            f"{p}{_shown(folder)} is not a model folder: it has no {MANIFEST_NAME}. Point at a folder the "
            f"pipeline wrote ({PIPELINE_FOLDERS}) or build it with `dvc repro`."
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise ModelFolderError(f"{p}{where} is not JSON (not UTF-8 text). {_rebuild(key)}") from None
    except json.JSONDecodeError as exc:
        raise ModelFolderError(
            f"{p}{where} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). {_rebuild(key)}"
        ) from None
    if isinstance(data, dict) and "family" in data and data["family"] not in FAMILIES:
        raise ModelFolderError(
            f"{p}{where}: family {_shown(data['family'], 40)!r} is not one of {', '.join(FAMILIES)}. "
            f"{_rebuild(key)} (model.family in params.yaml chooses the family)"
        )
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "the whole file"
        raise ModelFolderError(
            f"{p}{where} is not a chatforge manifest ({_shown(field, 60)}: {first['msg']}). {_rebuild(key)}"
        ) from None


def _check_folder(folder: Path, *, key: str | None, plain_ok: bool) -> bool:
    """The checks every opener shares; returns whether the folder has a manifest."""
    p = _prefix(key)
    if not folder.is_dir():
        fix = f"change {key}" if key else f"point at a folder the pipeline wrote ({PIPELINE_FOLDERS})"
        raise ModelFolderError(f"{p}model folder {_shown(folder)} does not exist. Build it first (`dvc repro`) or {fix}.")
    has_config, has_manifest = (folder / CONFIG_NAME).exists(), (folder / MANIFEST_NAME).exists()
    if has_config and (has_manifest or plain_ok):
        return has_manifest
    lacks = " and no ".join(name for name, ok in ((CONFIG_NAME, has_config), (MANIFEST_NAME, has_manifest)) if not ok)
    raise ModelFolderError(
        f"{p}{_shown(folder)} is not a model folder: it has no {lacks}. Point at a folder the pipeline wrote "
        f"({PIPELINE_FOLDERS}) or build it with `dvc repro`."
    )


def open_folder(folder: Path | str, *, key: str | None = None) -> Manifest:
    """Check that `folder` is a model folder the pipeline wrote (a directory with config.json and a
    valid chatforge.json) and return its manifest; `key` is the params key that chose it."""
    _check_folder(Path(folder), key=key, plain_ok=False)
    return read_manifest(folder, key=key)


def read_family(folder: Path | str, *, key: str | None = None, plain_ok: bool = False) -> str:
    """The family of the model folder `folder` (from chatforge.json, after the checks of `open_folder`).

    With `plain_ok`, a plain transformers folder (config.json, no chatforge.json: one a user brought)
    is accepted too; its family comes from config.json: an architecture named *ForCausalLM is a
    causal LM, anything else a classifier."""
    folder = Path(folder)
    if _check_folder(folder, key=key, plain_ok=plain_ok):
        return read_manifest(folder, key=key).family
    archs = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("architectures") or []
    return "causal_lm" if any(a.endswith("ForCausalLM") for a in archs) else "classifier"


def load_torch(folder: Path | str, *, family: str | None = None, key: str | None = None, plain_ok: bool = False,
               tokenizer: Any = None, dtype: Any = "float32", trust_remote_code: bool | None = None,
               **load_kwargs: Any) -> tuple[Any, Any, str]:
    """Load the model folder `folder` into torch: the one way a built folder becomes a torch model.

    Returns (model, tokenizer, family). Without `family`, the folder is checked first and its
    family read (`read_family(folder, key=key, plain_ok=plain_ok)`: ModelFolderError names what is
    wrong); a caller that passes `family` has checked the folder itself. A causal_lm loads as
    AutoModelForCausalLM, any other family as AutoModelForSequenceClassification, in `dtype`
    (float32 unless told), in eval mode (as transformers leaves it; training callers switch to train
    mode themselves). `tokenizer`: one the caller already loaded (else the folder's is loaded first,
    before the weights); `trust_remote_code` (model.trust_remote_code) goes to both loads when given;
    `load_kwargs` (config=, attn_implementation=, ...) go to the model's from_pretrained only."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if family is None:
        family = read_family(folder, key=key, plain_ok=plain_ok)
    remote = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(folder, **remote)
    cls = AutoModelForCausalLM if family == "causal_lm" else AutoModelForSequenceClassification
    model = cls.from_pretrained(folder, dtype=dtype, **remote, **load_kwargs).eval()
    return model, tokenizer, family


def sections_sha256(*sections: Any) -> str:
    """A stable hash of params sections (what chatforge.json records and checkpoints are keyed by)."""
    import hashlib

    payload = json.dumps([s.model_dump(mode="json") for s in sections], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_manifest(folder: Path | str, manifest: Manifest) -> None:
    """Write into a folder being built (the caller publishes the whole folder atomically)."""
    (Path(folder) / MANIFEST_NAME).write_text(manifest_json(manifest), encoding="utf-8")


def derived_manifest(parent_dir: Path, *, variant: str, details: Mapping[str, Any]) -> Manifest:
    """The manifest of a folder derived from the model folder `parent_dir` (distilled, pruned,
    quantized): the parent's, with `variant`, the parent's path and `details` merged into the
    parent's details under their own keys. Raises ModelFolderError when the parent has no valid manifest."""
    parent = read_manifest(parent_dir)
    return parent.model_copy(update={"variant": variant, "parent": str(parent_dir),
                                     "details": {**parent.details, **details}})


def publish_folder(folder: Path, manifest: Manifest, *, tokenizer: Any, model: Any = None, config: Any = None,
                   responses: Mapping[str, Mapping[str, str]] | None = None, exchanges: Sequence[Any] | None = None,
                   carry_from: Path | None = None, carry: Sequence[str] = CARRIED_FILES,
                   in_place: bool = False) -> None:
    """Publish a model folder: the one way base, train, distill, prune and quantize write theirs.

    Written: the weights (`model.save_pretrained`: config.json, model.safetensors, generation
    config), or only `config` (an ONNX folder, whose graphs the caller writes), the tokenizer with its
    chat template, the files named in `carry` that `carry_from` (the parent folder) has, a
    classifier's `responses` ({intent: {"zh": answer, "en": answer}} -> responses.json), a chat model's
    `exchanges` (Conversations -> retrieval.jsonl, chatforge.runtime.index) and the `manifest`
    (chatforge.json) last.

    `folder` appears atomically (chatforge.io.atomic_path: a temporary sibling, then a rename), so no
    stage ever reads a half-written folder. With `in_place`, `folder` is a folder the caller is already
    building inside its own atomic_path (quantize writes its ONNX graphs there first) and is written
    as it is."""
    from chatforge.io import atomic_path

    if not in_place:
        with atomic_path(folder) as tmp:
            publish_folder(tmp, manifest, tokenizer=tokenizer, model=model, config=config, responses=responses,
                           exchanges=exchanges, carry_from=carry_from, carry=carry, in_place=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model.save_pretrained(folder)
    if config is not None:
        config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in carry if carry_from is not None else ():
        if (carry_from / name).exists():
            (folder / name).write_bytes((carry_from / name).read_bytes())
    if responses is not None:
        (folder / "responses.json").write_text(
            json.dumps(responses, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if exchanges is not None:
        from chatforge.runtime.index import write_index

        write_index(folder, exchanges)
    write_manifest(folder, manifest)


def publish_derived(out_dir: Path, model: Any, tokenizer: Any, *, parent_dir: Path, variant: str,
                    details: dict[str, Any]) -> None:
    """Publish a torch model derived from the folder `parent_dir` (distill's student, prune's output)
    through `publish_folder`: its weights and tokenizer, the parent's CARRIED_FILES (`responses.json`,
    which classifiers answer with; `retrieval.jsonl`, the exchanges of retrieval in the loop) and
    `derived_manifest(parent_dir, variant=variant, details=details)`."""
    publish_folder(out_dir, derived_manifest(parent_dir, variant=variant, details=details), model=model,
                   tokenizer=tokenizer, carry_from=parent_dir)
