"""A model card (README.md with Hugging Face YAML front matter) for an exported model folder.

`training_summary` and `evaluated_row` read the metrics JSON the pipeline wrote under reports/
(ingest, clean, split, augment, train, evaluate); `render_model_card` is pure and turns them, the
folder's manifest and the exported files into the card text. Missing reports leave their section
saying so, never an error: an exported folder may come from another checkout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.io import sha256_tree

# model.base values whose upstream hub id and license are known
KNOWN_BASES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    # Gemma Terms of Use (ai.google.dev/gemma/terms): a redistributed derivative passes on its use
    # restrictions and a notice that Gemma is provided under and subject to those terms
    "gemma3-270m": ("google/gemma-3-270m", "gemma"),
}
PROJECT_LICENSE = "apache-2.0"  # chatforge's own license (pyproject), for models trained from scratch

# evaluate.json keys shown on the card, in this order, with their labels
CARD_METRICS: tuple[tuple[str, str], ...] = (
    ("bleu", "BLEU (all)"), ("bleu_zh", "BLEU zh"), ("bleu_en", "BLEU en"), ("chrf", "chrF"),
    ("exact_match", "exact match"), ("slot_carry", "slot carry"), ("degenerate_rate", "degenerate answers"),
    ("perplexity", "perplexity"), ("fallback_rate", "fallback rate"), ("size_mb", "size (MB, float32)"),
    ("latency_p50_ms", "latency p50 (ms, CPU)"),
)


@dataclass(frozen=True)
class CardFile:
    """An exported file listed on the card: its name, GGUF type and size in bytes."""

    name: str
    gguf_type: str
    size_bytes: int


@dataclass(frozen=True)
class CardInputs:
    """Everything the card says. `base` is the manifest's model.base value (scratch, a pip name, a
    folder or a hub id); `training` and `metrics` come from training_summary / variant_metrics."""

    name: str
    variant: str
    base: str | None
    parent: str | None
    parameters: int
    layers: int
    hidden: int
    context_tokens: int
    files: Sequence[CardFile]
    modelfile: str | None = "Modelfile"
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    slot_placeholders: bool = False  # trained with slot placeholders: llama.cpp/Ollama answers are the raw_* ones


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def training_summary(reports_dir: Path | str) -> dict[str, Any]:
    """Counts from reports/{ingest,clean,split,augment,train}.json; keys are absent where a report is.

    Keys: conversations_ingested, conversations_by_lang ({lang: n}), conversations_after_clean,
    train/val/test_conversations, rows_after_augment, train_steps, train_tokens.
    """
    reports = Path(reports_dir)
    out: dict[str, Any] = {}
    if ingest := _read_json(reports / "ingest.json"):
        out["conversations_ingested"] = ingest.get("conversations")
        out["conversations_by_lang"] = ingest.get("conversations_by_lang")
    if clean := _read_json(reports / "clean.json"):
        out["conversations_after_clean"] = clean.get("conversations_out")
    if split := _read_json(reports / "split.json"):
        for part, n in (split.get("conversations") or {}).items():
            out[f"{part}_conversations"] = n
    if augment := _read_json(reports / "augment.json"):
        out["rows_after_augment"] = augment.get("rows_out")
    if train := _read_json(reports / "train.json"):
        out["train_steps"] = train.get("steps")
        out["train_tokens"] = train.get("train_tokens")
    return {k: v for k, v in out.items() if v is not None}


def evaluated_row(reports_dir: Path | str, variant: str, folder: Path | str) -> dict[str, Any] | None:
    """`variant`'s block of reports/evaluate.json when evaluate measured this very folder, else None.

    evaluate records each variant's folder hash (`models.<variant>.sha256`, chatforge.io.sha256_tree
    over every file); a folder with other contents (another build, a pip base under the same
    variant name, weights changed after evaluate ran) gets None: its numbers are not measured.
    """
    evaluate = _read_json(Path(reports_dir) / "evaluate.json") or {}
    row, models = evaluate.get(variant), evaluate.get("models")
    if not isinstance(row, dict) or not isinstance(models, dict) or not isinstance(models.get(variant), dict):
        return None
    return row if models[variant].get("sha256") == sha256_tree(folder) else None


def variant_metrics(row: Mapping[str, Any] | None) -> dict[str, float]:
    """The CARD_METRICS of an evaluate.json variant block (evaluated_row; {} for None)."""
    row = row or {}
    keys = [k for k, _ in CARD_METRICS] + [f"raw_{k}" for k, _ in CARD_METRICS]
    return {k: float(row[k]) for k in keys if isinstance(row.get(k), int | float)}


def standalone_below_retrieval(reports_dir: Path | str, row: Mapping[str, Any] | None) -> list[str] | None:
    """What a GGUF export of the variant whose evaluate.json block is `row` (evaluated_row) would
    lose against the retrieval baseline. llama.cpp and Ollama run the model alone: no slot
    placeholders, no retrieval in the loop, no confidence threshold, so the comparable scores are the
    raw-prompt ones (raw_bleu_zh/_en, for a model trained with placeholders) or else the model's own
    (model_bleu_zh/_en). Returns one line per language where they are below retrieval's BLEU,
    [] when they are not, None when evaluate has not measured them for this folder (row None)."""
    bar = (_read_json(Path(reports_dir) / "evaluate.json") or {}).get("retrieval")
    if not isinstance(row, dict) or not isinstance(bar, dict):
        return None
    lines = []
    for lang in ("zh", "en"):
        own = next((row[k] for k in (f"raw_bleu_{lang}", f"model_bleu_{lang}") if isinstance(row.get(k), int | float)), None)
        ref = bar.get(f"bleu_{lang}")
        if own is None or not isinstance(ref, int | float):
            return None
        if own < ref:
            lines.append(f"BLEU {lang} {own:.1f} on its own against retrieval's {ref:.1f}")
    return lines


def base_model_and_license(base: str | None) -> tuple[str | None, str]:
    """(hub id for front matter `base_model`, license id): None and the project license for scratch
    or a local folder; the hub id itself and "other" for an unknown hub model (check its license)."""
    if base in KNOWN_BASES:
        return KNOWN_BASES[base]
    if base in (None, "scratch", "tiny") or Path(str(base)).expanduser().exists() or str(base).startswith((".", "/", "~")):
        return None, PROJECT_LICENSE
    return str(base), "other"


def _mb(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f}"


def render_model_card(card: CardInputs) -> str:
    """The README.md text: YAML front matter (license, base_model when known, language [zh, en],
    library_name, pipeline_tag, tags), then files, usage, base model, training data, evaluation, limits."""
    base_model, license_id = base_model_and_license(card.base)
    front = ["---", f"license: {license_id}"]
    if base_model:
        front.append(f"base_model: {base_model}")
    front += [
        "language:", "  - zh", "  - en", "library_name: gguf", "pipeline_tag: text-generation",
        "tags:", "  - chatforge", "  - gguf", "  - llama.cpp", "  - ollama", "  - chat", f"  - {card.variant}", "---", "",
    ]
    body = [
        f"# {card.name}",
        "",
        (f"A Chinese/English customer-service chat model ({card.variant} variant) built by the chatforge "
        f"pipeline and exported to GGUF. LLaMA architecture, {card.parameters / 1e6:.1f}M parameters, "
        f"{card.layers} layers, hidden size {card.hidden}, context {card.context_tokens} tokens, ChatML chat format."),
        "",
        "## Files",
        "",
        "| file | type | size (MB) |",
        "|---|---|---|",
        *[f"| {f.name} | {f.gguf_type} | {_mb(f.size_bytes)} |" for f in card.files],
    ]
    if card.modelfile:
        body.append(f"| {card.modelfile} | Ollama Modelfile | - |")
    # the smallest file is what the Modelfile points at (Q8_0 when it was written)
    first = min(card.files, key=lambda f: f.size_bytes).name if card.files else "MODEL.gguf"
    body += [
        "",
        "## Use",
        "",
        "```sh",
        f"ollama create {card.name} -f Modelfile && ollama run {card.name}",
        f"llama-cli -m {first} -cnv   # the chat template is embedded (tokenizer.chat_template)",
        "```",
        "",
        "## Base model",
        "",
    ]
    if base_model:
        body.append(f"Fine-tuned from [{base_model}](https://huggingface.co/{base_model}) (model.base `{card.base}`).")
    elif card.base == "scratch":
        body.append("Trained from scratch (model.base `scratch`): a fresh LLaMA config and a byte-level BPE tokenizer "
                    "trained on the corpus below.")
    else:
        body.append(f"Built from `{card.base}`.")
    if card.parent:
        body.append(f"Derived from the pipeline folder `{card.parent}`.")
    body += ["", "## Training data", ""]
    t = card.training
    if t:
        by_lang = t.get("conversations_by_lang") or {}
        lang = f" ({', '.join(f'{k}: {v}' for k, v in sorted(by_lang.items()))})" if by_lang else ""
        rows = [
            ("conversations read", f"{t['conversations_ingested']}{lang}" if "conversations_ingested" in t else None),
            ("after cleaning (dedup, PII masking, length bounds)", t.get("conversations_after_clean")),
            ("train / val / test conversations",
             " / ".join(str(t.get(f"{p}_conversations", "-")) for p in ("train", "val", "test"))
             if "train_conversations" in t else None),
            ("training rows after balancing and augmentation", t.get("rows_after_augment")),
            ("training steps / tokens (train stage)",
             f"{t.get('train_steps', '-')} / {t.get('train_tokens', '-')}" if "train_steps" in t else None),
        ]
        body += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows if v is not None]]
    else:
        body.append("No pipeline reports were found (reports/*.json), so the data is not summarised here.")
    body += ["", "## Evaluation", ""]
    served = {k: v for k, v in card.metrics.items() if not k.startswith("raw_")}
    raw = {k[4:]: v for k, v in card.metrics.items() if k.startswith("raw_")}
    if served and raw:
        body += [
            (f"On the held-out test split (reports/evaluate.json, variant `{card.variant}`, float32 before export). "
            "The model was trained with slot placeholders: `chatforge serve` replaces order numbers and entities "
            "in the user's messages by placeholders and fills them back into the answer; llama.cpp and Ollama "
            "pass the messages as written, which the last column measures."),
            "",
            "| metric | chatforge serve | llama.cpp / Ollama (messages as written) |",
            "|---|---|---|",
            *[f"| {label} | {served[k]:.4g} | {f'{raw[k]:.4g}' if k in raw else '-'} |"
              for k, label in CARD_METRICS if k in served],
        ]
    elif served:
        labels = dict(CARD_METRICS)
        body += [
            f"On the held-out test split (reports/evaluate.json, variant `{card.variant}`, float32 before export):",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {labels[k]} | {v:.4g} |" for k, v in served.items()],
        ]
    else:
        body.append(f"No evaluation of variant `{card.variant}` was found in reports/evaluate.json.")
    body += ["", "## Limitations", ""]
    if card.slot_placeholders:
        measured = (f" (measured: BLEU {raw['bleu_zh']:.1f} zh / {raw['bleu_en']:.1f} en and slot carry "
                    f"{raw['slot_carry']:.2f}, against {served['bleu_zh']:.1f} / {served['bleu_en']:.1f} and "
                    f"{served['slot_carry']:.2f} served)"
                    if all(k in raw and k in served for k in ("bleu_zh", "bleu_en", "slot_carry")) else "")
        body.append(
            "- **Slot placeholders.** This model learned to answer with <number_1>, <city_1>, ... in place of the "
            "order numbers, cities and products of the user's message; `chatforge serve` does that replacement "
            "and fills the values back in. In llama.cpp and Ollama the model sees the values as written and "
            f"answers worse and without them{measured}. Serve it with `chatforge serve` for the full quality, or "
            "build with `model.slots.enabled: false` for a model that needs no placeholders."
        )
    body += [
        ("- `chatforge serve` falls back to a canned reply below its confidence threshold and filters sensitive "
        "words; llama.cpp and Ollama do neither."),
        "- A small domain model: it answers the customer-service intents it was trained on, not open questions.",
        "",
    ]
    return "\n".join(front + body)
