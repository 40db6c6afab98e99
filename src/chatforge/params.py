"""The typed schema of params.yaml: one pydantic model per section.

Every section rejects unknown keys (a misspelt key is an error, not a silently ignored knob) and
coerces numeric strings: `dvc exp run -S train.lr=1e-07` writes a value that YAML reads back as the
string "1e-07", which must still be a float here. Errors name the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """A params file that cannot be used; the message says which key and how to fix it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------- ingest
SourceFormat = Literal[
    "conversations_json",  # {"conversations": [{"id", "messages": [{"role", "content"}], "intent"?}]}
    "messages_jsonl",  # OpenAI / ShareGPT: one {"messages": [...]} or {"conversations": [...]} per line
    "cornell",  # Cornell Movie-Dialogs: a folder with movie_lines.txt + movie_conversations.txt
    "dailydialog",  # one dialogue per line, utterances separated by __eou__ (+ optional TAB labels)
    "crosswoz",  # CrossWOZ JSON (optionally .zip): roles usr/sys, dialog_act gives the intent
    "csv",  # one row per exchange: utterance, response and optionally intent columns
    "tsv",
    "chatterbot_yaml",  # chatterbot-corpus YAML: {categories, conversations: [[a, b, ...]]}
    "feedback",  # `chatforge feedback export` output (JSONL of messages with intent/lang)
]


class SourceOptions(Section):
    encoding: str = "utf-8"
    # role names in the file -> user|assistant|system (defaults per format cover the usual names)
    role_map: dict[str, Literal["user", "assistant", "system"]] = Field(default_factory=dict)
    lang: Literal["auto", "zh", "en"] = "auto"
    intent: str | None = None  # intent for every conversation of this source (when it has none)
    # csv/tsv column names
    utterance_column: str = "utterance"
    response_column: str = "response"
    intent_column: str | None = "intent"
    conversation_column: str | None = None  # rows sharing a value form one multi-turn conversation
    # dailydialog: label columns after the text (topic/act/emotion); topic becomes the intent
    topic_names: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)  # read at most this many conversations


class Source(Section):
    path: str
    format: SourceFormat
    name: str | None = None  # the `source` column value; defaults to the file stem
    optional: bool = False  # a missing optional source (e.g. no feedback exported yet) is logged, not an error
    options: SourceOptions = Field(default_factory=SourceOptions)


class IngestParams(Section):
    sources: list[Source] = Field(min_length=1)
    # what to do with consecutive messages of the same role after role mapping
    same_role: Literal["merge", "drop_conversation"] = "merge"
    # the separator used when merging consecutive same-role messages
    merge_separator: str = "\n"
    # a conversation needs at least one user and one assistant message
    min_turns: int = Field(default=2, ge=2)


# ---------------------------------------------------------------------------------------- clean
class CleanParams(Section):
    strip_html: bool = True
    remove_control: bool = True  # control chars, zero-width chars, U+FFFD, emoji and stray symbols
    keep_emoji: bool = False
    nfkc: bool = True  # full-width -> half-width letters/digits, compatibility forms
    traditional_to_simplified: bool = False  # OpenCC t2s on Chinese rows
    synonyms_path: str | None = None  # TSV lexicon: variant<TAB>canonical (one per line, # comments)
    mask_pii: bool = True
    pii_kinds: list[Literal["phone", "email", "id_number", "card"]] = Field(
        default_factory=lambda: ["phone", "email", "id_number", "card"]
    )
    min_chars: int = Field(default=1, ge=0)  # a turn shorter than this (after cleaning) drops its conversation
    max_chars: int = Field(default=2000, ge=1)  # a longer turn drops its conversation
    dedup_exact: bool = True
    dedup_near: bool = True  # conversations equal after case/punctuation/space/symbol folding

    @model_validator(mode="after")
    def _bounds(self) -> CleanParams:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self


# ---------------------------------------------------------------------------------------- split
class SplitParams(Section):
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    salt: str = "chatforge-split-v1"  # changing it reshuffles every conversation: do it deliberately

    @model_validator(mode="after")
    def _fractions(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 so train is not empty")
        return self


# -------------------------------------------------------------------------------------- balance
class BalanceParams(Section):
    max_imbalance: float = Field(default=0.2, ge=0.0, lt=1.0)  # (max - min) / max over intents
    min_count: int = Field(default=5, ge=1)  # intents with fewer conversations are left as they are
    target: Literal["median", "mean", "max", "min"] = "median"  # the class size to aim at
    max_upsample_factor: float = Field(default=4.0, ge=1.0)  # never copy a class beyond this factor
    seed: int = 13


# ==== section: model (issue 3) — replace this placeholder block with the real model ====
class ModelParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: model ====


# ==== section: translator (issue 4) — replace this placeholder block with the real model ====
class TranslatorParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: translator ====


# ==== section: augment (issue 4) — replace this placeholder block with the real model ====
class AugmentParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: augment ====


# ==== section: train (issue 3) — replace this placeholder block with the real model ====
class TrainParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: train ====


# ==== section: distill (issue 5) — replace this placeholder block with the real model ====
class DistillParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: distill ====


# ==== section: prune (issue 5) — replace this placeholder block with the real model ====
class PruneParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: prune ====


# ==== section: quantize (issue 5) — replace this placeholder block with the real model ====
class QuantizeParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: quantize ====


# ==== section: evaluate (issue 6) — replace this placeholder block with the real model ====
class EvaluateParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: evaluate ====


# ==== section: serve (issue 7) — replace this placeholder block with the real model ====
class ServeParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder until the stage lands


# ==== end section: serve ====


SECTIONS: dict[str, type[Section]] = {
    "ingest": IngestParams,
    "clean": CleanParams,
    "split": SplitParams,
    "balance": BalanceParams,
    "model": ModelParams,
    "translator": TranslatorParams,
    "augment": AugmentParams,
    "train": TrainParams,
    "distill": DistillParams,
    "prune": PruneParams,
    "quantize": QuantizeParams,
    "evaluate": EvaluateParams,
    "serve": ServeParams,
}

S = TypeVar("S", bound=Section)


def _describe(error: dict[str, Any], section: str) -> str:
    loc = ".".join(str(p) for p in (section, *error["loc"]))
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key (value {shown}). Remove it or fix its spelling."
    if error["type"] == "missing":
        return f"{loc}: required key is missing. Add it to params.yaml."
    return f"{loc} = {shown}: {msg}."


def _known_keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def validate_section(name: str, raw: Any, model: type[S], *, path: Path = DEFAULT_PARAMS_PATH) -> S:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: section '{name}' must be a mapping of keys, got {type(raw).__name__}.")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, name) for e in exc.errors()]
        hint = f"Allowed keys in '{name}': {_known_keys(model)}." if any("unknown key" in ln for ln in lines) else ""
        raise ParamsError(f"{path}: invalid params:\n  " + "\n  ".join(lines) + (f"\n  {hint}" if hint else "")) from None


def read_params_file(path: Path = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found. Run from the project root or pass its path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections ({', '.join(SECTIONS)}).")
    return data


def load_section(name: str, *, path: Path = DEFAULT_PARAMS_PATH) -> Section:
    """Validate one section of params.yaml (what a stage calls before any heavy work)."""
    data = read_params_file(path)
    if name not in SECTIONS:
        raise ParamsError(f"unknown params section '{name}'; known: {', '.join(SECTIONS)}")
    return validate_section(name, data.get(name), SECTIONS[name], path=path)


def load_all(path: Path = DEFAULT_PARAMS_PATH) -> dict[str, Section]:
    """Validate every section; collects every error so one run of `params check` shows them all."""
    data = read_params_file(path)
    unknown = [k for k in data if k not in SECTIONS]
    problems: list[str] = [
        f"{k}: unknown section. Known sections: {', '.join(SECTIONS)}." for k in unknown
    ]
    out: dict[str, Section] = {}
    for name, model in SECTIONS.items():
        if name not in data and not _has_defaults(model):
            problems.append(f"{name}: section missing. Add it to params.yaml.")
            continue
        try:
            out[name] = validate_section(name, data.get(name), model, path=path)
        except ParamsError as exc:
            problems.extend(str(exc).splitlines()[1:])
    if problems:
        raise ParamsError(f"{path}: invalid params:\n  " + "\n  ".join(p.strip() for p in problems))
    return out


def _has_defaults(model: type[BaseModel]) -> bool:
    return all(not f.is_required() for f in model.model_fields.values())


__all__ = [
    "SECTIONS",
    "BalanceParams",
    "CleanParams",
    "IngestParams",
    "ParamsError",
    "Section",
    "Source",
    "SourceOptions",
    "SplitParams",
    "load_all",
    "load_section",
    "validate_section",
]
