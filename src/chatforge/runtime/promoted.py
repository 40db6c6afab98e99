"""The promoted model: what is being served, kept where the next build cannot overwrite it.

`chatforge promote` copies the build users are about to get into one folder (default
`models/served`, git-ignored and outside every DVC output):

    <root>/model/          the float torch model folder the served INT8 was quantized from
                           (a copy of models/<quantize.source>; open it with runtime.folder)
    <root>/onnx/           a copy of the served ONNX folder (models/onnx): still servable as an A/B
                           variant after the next build overwrites models/onnx
    <root>/evaluate.json   a copy of the reports/evaluate.json that measured this build
    <root>/promoted.json   the manifest: when, from which folders, sha256 of both trees
                           (chatforge.io.sha256_tree) and the served BLEU zh / en and slot carry

Readers: an incremental build trains from `promoted_model(root)` (train.init_from: served), and
evaluate's forgetting gates compare the new served model with `previous_scores` of the promoted
evaluate.json. Every error is a `PromotedError` (a `ModelFolderError`): the message says what is
wrong and how to fix it, and quotes paths cut to runtime.folder.SHOWN_CHARS.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from chatforge.runtime.folder import ModelFolderError, _shown, open_folder

DEFAULT_ROOT = Path("models/served")
MODEL_DIR = "model"
ONNX_DIR = "onnx"
REPORT_NAME = "evaluate.json"
MANIFEST_NAME = "promoted.json"
ONNX_FILES = ("model.int8.onnx", "model.onnx")  # an ONNX folder has at least one of them
PROMOTE_HINT = "run `chatforge promote` after a build that passed evaluate"


class PromotedError(ModelFolderError):
    """A promoted folder, or one of the folders or the report promote copies, is not usable; the
    message says what is wrong and how to fix it. A ModelFolderError, so every caller that handles
    a bad model folder handles this too."""


@dataclass(frozen=True)
class ServedScores:
    """The served variant's answer scores in an evaluate.json: BLEU (0-100) per language and slot
    carry (share of dialogue slots the answer repeats, 0-1), all on the test split."""

    variant: str  # summary.served_variant: the evaluated variant serve.variants[0] names (int8 by default)
    bleu_zh: float
    bleu_en: float
    slot_carry: float


class PromotedManifest(BaseModel):
    """promoted.json: where the promoted copies came from and what they measured."""

    model_config = ConfigDict(extra="allow")

    promoted_at: str  # ISO 8601 UTC
    model_source: str  # the float folder copied to model/
    model_sha256: str  # chatforge.io.sha256_tree of model/
    onnx_source: str
    onnx_sha256: str
    report_source: str  # the evaluate.json copied to evaluate.json
    served_variant: str
    bleu_zh: float
    bleu_en: float
    slot_carry: float


@dataclass(frozen=True)
class PromotedPaths:
    """A checked promoted folder: its parts and its manifest."""

    root: Path
    model: Path  # root/model: the float torch folder (train.init_from: served starts from it)
    onnx: Path  # root/onnx: servable as an A/B variant (serve.variants[].model)
    report: Path  # root/evaluate.json
    manifest: PromotedManifest


def previous_scores(path: Path | str) -> ServedScores:
    """The served variant's BLEU zh / en and slot carry from the evaluate.json at `path`: the block
    of the variant named by summary.served_variant (the one serve.variants[0] serves), keys bleu_zh,
    bleu_en, slot_carry.

    Raises PromotedError when the file is missing, is not a JSON object, names no served variant,
    or lacks one of the three numbers (a classifier build, an upstream served variant, a report
    from before evaluate ran the served variant)."""
    path = Path(path)
    where = _shown(path)
    data = _read_json(path, what="an evaluate report", fix="run `dvc repro evaluate`, then `chatforge promote`")
    summary = data.get("summary")
    served = summary.get("served_variant") if isinstance(summary, dict) else None
    if not isinstance(served, str) or served in ("", "none") or not isinstance(data.get(served), dict):
        raise PromotedError(
            f"{where} names no evaluated served variant (summary.served_variant is {_shown(repr(served), 40)}): it has no "
            "served BLEU zh / en and slot carry to compare with. Promote a build whose evaluate scored the served "
            "variant (serve.variants[0] a folder the pipeline built, e.g. models/onnx): `dvc repro evaluate`, then "
            "`chatforge promote`."
        )
    block = data[served]
    values: dict[str, float] = {}
    for key in ("bleu_zh", "bleu_en", "slot_carry"):
        value = block.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise PromotedError(
                f"{where}: the served variant {_shown(served, 40)!r} has no number {key} (got {_shown(repr(value), 40)}): "
                "only a causal-LM build scored on answers has served BLEU zh / en and slot carry. Promote a build whose "
                "evaluate scored them (`dvc repro evaluate`, then `chatforge promote`)."
            )
        values[key] = float(value)
    return ServedScores(served, values["bleu_zh"], values["bleu_en"], values["slot_carry"])


def promote(model_dir: Path | str, onnx_dir: Path | str, report: Path | str, to: Path | str = DEFAULT_ROOT) -> PromotedPaths:
    """Copy a build into the promoted folder `to` (layout: the module docstring) and return its paths.

    `model_dir`: the float torch folder the served INT8 was quantized from (models/<quantize.source>);
    `onnx_dir`: the served ONNX folder (models/onnx); `report`: the evaluate.json that measured them.
    The copies are made in a temporary sibling of `to`, hashed there, and renamed into place
    (chatforge.io.atomic_path), so a reader sees the old promoted folder or the new one, never a
    mix; an existing promoted folder is replaced.

    Raises PromotedError (a ModelFolderError) before anything is written when a source is missing
    or not a model folder, the model is not a float torch folder, the ONNX folder has no model.onnx /
    model.int8.onnx, the report has no served scores, `to` is a source or holds one, or `to` exists
    and is not a promoted folder; and after copying, when the report's recorded sha256 of a folder
    (its `models` block) differs from the copy's (they are from different builds)."""
    from chatforge.io import atomic_path, sha256_tree, write_json

    model_dir, onnx_dir, report, to = Path(model_dir), Path(onnx_dir), Path(report), Path(to)
    _check_model(model_dir)
    _check_onnx(onnx_dir)
    scores = previous_scores(report)
    _check_target(to, sources=(model_dir, onnx_dir, report))
    measured = _measured(report, served=scores.variant, onnx_dir=onnx_dir)
    with atomic_path(to) as tmp:
        tmp.mkdir()
        shutil.copytree(model_dir, tmp / MODEL_DIR, symlinks=False)
        shutil.copytree(onnx_dir, tmp / ONNX_DIR, symlinks=False)
        shutil.copyfile(report, tmp / REPORT_NAME)
        hashes = {MODEL_DIR: sha256_tree(tmp / MODEL_DIR), ONNX_DIR: sha256_tree(tmp / ONNX_DIR)}
        for part, source in ((ONNX_DIR, onnx_dir), (MODEL_DIR, model_dir)):
            if part in measured and measured[part][1] != hashes[part]:
                folder, want = measured[part]
                raise PromotedError(
                    f"{_shown(source)} is not the folder {_shown(report)} measured as {_shown(folder, 80)} (sha256 "
                    f"{hashes[part][:12]}..., the report has {want[:12]}...): the models and the report come from different "
                    "builds. Run `dvc repro` so they are from one build (or pass the --model / --onnx the report measured), "
                    "then promote again."
                )
        manifest = PromotedManifest(
            promoted_at=datetime.now(UTC).isoformat(timespec="seconds"), model_source=str(model_dir),
            model_sha256=hashes[MODEL_DIR], onnx_source=str(onnx_dir), onnx_sha256=hashes[ONNX_DIR],
            report_source=str(report), served_variant=scores.variant, bleu_zh=scores.bleu_zh, bleu_en=scores.bleu_en,
            slot_carry=scores.slot_carry,
        )
        write_json(manifest.model_dump(), tmp / MANIFEST_NAME)
    return PromotedPaths(to, to / MODEL_DIR, to / ONNX_DIR, to / REPORT_NAME, manifest)


def is_promoted(root: Path | str) -> bool:
    """Whether `root` is a folder `chatforge promote` wrote (it has promoted.json); nothing else is checked."""
    return (Path(root) / MANIFEST_NAME).is_file()


def open_promoted(root: Path | str = DEFAULT_ROOT, *, verify_hashes: bool = False) -> PromotedPaths:
    """Check the promoted folder `root` and return its paths: promoted.json is a valid manifest,
    model/ a float torch model folder, onnx/ an ONNX model folder, evaluate.json present. With
    `verify_hashes`, both trees are hashed again (chatforge.io.sha256_tree) and compared with the
    manifest (about a second per 100 MB).

    Raises PromotedError (a ModelFolderError) naming the part that is wrong and saying to run
    `chatforge promote`."""
    root = Path(root)
    where = _shown(root)
    if not root.is_dir():
        raise PromotedError(f"promoted folder {where} does not exist: nothing has been promoted there yet; {PROMOTE_HINT} "
                            "(it writes models/served), or point at the folder it wrote.")
    if not is_promoted(root):
        raise PromotedError(f"{where} is not a promoted folder: it has no {MANIFEST_NAME}; {PROMOTE_HINT} (it writes "
                            "models/served), or point at the folder it wrote.")
    data = _read_json(root / MANIFEST_NAME, what="a promote manifest", fix=PROMOTE_HINT + " again")
    try:
        manifest = PromotedManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "the whole file"
        raise PromotedError(f"{_shown(root / MANIFEST_NAME)} is not a promote manifest ({_shown(field, 60)}: "
                            f"{first['msg']}); {PROMOTE_HINT} again.") from None
    try:
        _check_model(root / MODEL_DIR)
        _check_onnx(root / ONNX_DIR)
    except ModelFolderError as exc:
        raise PromotedError(f"promoted folder {where} is incomplete: {exc} ({PROMOTE_HINT} again)") from None
    if not (root / REPORT_NAME).is_file():
        raise PromotedError(f"promoted folder {where} is incomplete: it has no {REPORT_NAME}; {PROMOTE_HINT} again.")
    if verify_hashes:
        from chatforge.io import sha256_tree

        for part, want in ((MODEL_DIR, manifest.model_sha256), (ONNX_DIR, manifest.onnx_sha256)):
            if (got := sha256_tree(root / part)) != want:
                raise PromotedError(f"{_shown(root / part)} changed since it was promoted (sha256 {got[:12]}..., "
                                    f"{MANIFEST_NAME} has {want[:12]}...); {PROMOTE_HINT} again.")
    return PromotedPaths(root, root / MODEL_DIR, root / ONNX_DIR, root / REPORT_NAME, manifest)


def promoted_model(root: Path | str = DEFAULT_ROOT) -> Path:
    """The float torch model folder of the promoted folder `root` (root/model), after `open_promoted`'s
    checks: where an incremental build (train.init_from: served) starts. Raises PromotedError (a
    ModelFolderError) as open_promoted does."""
    return open_promoted(root).model


# ------------------------------------------------------------------------------------------- checks
def _read_json(path: Path, *, what: str, fix: str) -> dict[str, Any]:
    where = _shown(path)
    if not path.is_file():
        raise PromotedError(f"{where} not found ({what} expected there); {fix}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PromotedError(f"{where} is not {what} (not UTF-8 text); {fix}.") from None
    except json.JSONDecodeError as exc:
        raise PromotedError(f"{where} is not {what} (not JSON: {exc.msg} at line {exc.lineno}); {fix}.") from None
    if not isinstance(data, dict):
        raise PromotedError(f"{where} is not {what} (a JSON {type(data).__name__}, not an object); {fix}.")
    return data


def _check_model(folder: Path) -> None:
    open_folder(folder)  # a directory with config.json and a valid chatforge.json
    if not any(folder.glob("*.safetensors")):
        raise PromotedError(
            f"{_shown(folder)} has no *.safetensors weights: the promoted model must be the float torch folder the "
            "served INT8 was quantized from (models/<quantize.source>, e.g. models/pruned), not an ONNX folder."
        )


def _check_onnx(folder: Path) -> None:
    open_folder(folder)
    if not any((folder / name).is_file() for name in ONNX_FILES):
        raise PromotedError(
            f"{_shown(folder)} has no {' or '.join(ONNX_FILES)}: the promoted ONNX folder must be the served one the "
            "quantize stage wrote (models/onnx; `dvc repro quantize`)."
        )


def _check_target(to: Path, *, sources: tuple[Path, ...]) -> None:
    """`to` may be replaced: it is not a source and holds none, and it is absent, empty or a promoted folder."""
    target = to.resolve()
    for source in sources:
        s = source.resolve()
        if s == target or target in s.parents or s in target.parents:
            raise PromotedError(
                f"the promoted folder {_shown(to)} and the source {_shown(source)} overlap: promote replaces the whole "
                "target folder. Choose a target outside the sources (default models/served)."
            )
    if to.exists() and not (to.is_dir() and (is_promoted(to) or not any(to.iterdir()))):
        raise PromotedError(
            f"{_shown(to)} exists and is not a promoted folder (no {MANIFEST_NAME}): promote replaces only a folder it "
            "wrote. Choose another target, or move that one away first."
        )


def _measured(report: Path, *, served: str, onnx_dir: Path) -> dict[str, tuple[str, str]]:
    """{part: (folder, sha256)} the report recorded (its `models` block, {variant: {folder, sha256}})
    for the served ONNX folder (onnx) and for the float folder it was quantized from (model: the
    entry whose folder is the ONNX manifest's parent); a part the report does not record is left out
    (reports from before the block existed, a parent evaluate did not score)."""
    from chatforge.runtime.folder import read_manifest

    models = json.loads(report.read_text(encoding="utf-8")).get("models")
    if not isinstance(models, dict):
        return {}
    recorded = {str(e["folder"]): e["sha256"] for e in models.values()
                if isinstance(e, dict) and isinstance(e.get("folder"), str) and isinstance(e.get("sha256"), str)}
    out: dict[str, tuple[str, str]] = {}
    onnx = models.get(served)
    if isinstance(onnx, dict) and onnx.get("folder") in recorded:
        out[ONNX_DIR] = (onnx["folder"], recorded[onnx["folder"]])
    parent = read_manifest(onnx_dir).parent
    if parent is not None and parent in recorded:
        out[MODEL_DIR] = (parent, recorded[parent])
    return out
