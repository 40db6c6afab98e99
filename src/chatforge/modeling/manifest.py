"""`chatforge.json`: what every model folder the pipeline writes says about itself.

A model folder is an ordinary transformers folder (config.json, model.safetensors, tokenizer files,
chat template) plus this manifest. Classifier folders also carry `responses.json`
({intent: {"zh": answer, "en": answer}}) and their labels in config.id2label.
ONNX folders add model.onnx / model.int8.onnx next to the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "chatforge.json"
# what a derived folder takes over from its parent: a classifier's answers, a chat model's exchanges
# (retrieval in the loop, chatforge.runtime.index.INDEX_NAME)
CARRIED_FILES = ("responses.json", "retrieval.jsonl")
Family = Literal["causal_lm", "classifier", "translator"]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    family: Family
    variant: str  # base | teacher | student | pruned | int8 | ...
    parent: str | None = None  # the folder (or hub id / package) it was derived from
    base: str | None = None  # the model.base value it started from
    data_sha256: str | None = None  # hash of the data it was trained on
    params_sha256: str | None = None  # hash of the params sections that shaped it
    details: dict[str, Any] = Field(default_factory=dict)


def read_manifest(folder: Path | str) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{folder}: not a chatforge model folder ({MANIFEST_NAME} missing). "
            "Build it with `dvc repro` or point at a folder the pipeline wrote."
        )
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_manifest(folder: Path | str, manifest: Manifest) -> None:
    """Write into a folder being built (the caller publishes the whole folder atomically)."""
    (Path(folder) / MANIFEST_NAME).write_text(manifest_json(manifest), encoding="utf-8")


def publish_derived(out_dir: Path, model: Any, tokenizer: Any, *, parent_dir: Path, variant: str,
                    details: dict[str, Any]) -> None:
    """Atomically publish a model derived from the folder `parent_dir` (distilled, pruned, ...).

    The folder gets the weights, the tokenizer, the parent's CARRIED_FILES (`responses.json`, which
    classifiers answer with; `retrieval.jsonl`, the exchanges of retrieval in the loop) and a manifest that inherits the parent's and records `variant`, the parent and
    `details` (merged into the parent's details under their own keys).
    """
    from chatforge.io import atomic_path

    parent = read_manifest(parent_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in CARRIED_FILES:
            if (parent_dir / name).exists():
                (tmp / name).write_bytes((parent_dir / name).read_bytes())
        update = {"variant": variant, "parent": str(parent_dir), "details": {**parent.details, **details}}
        write_manifest(tmp, parent.model_copy(update=update))
