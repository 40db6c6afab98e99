"""Export a causal-LM model folder to GGUF (llama.cpp, Ollama, LM Studio) and write its Ollama Modelfile.

The file is written with the `gguf` package (GGUFWriter, its LLaMA tensor-name map and
`gguf.quants.quantize`) the way llama.cpp's convert_hf_to_gguf.py writes a LlamaForCausalLM:

- q_proj / k_proj rows are permuted from the rotate-half layout transformers uses to the
  interleaved-pair layout llama.cpp's RoPE expects (transformers' GGUF loader undoes it);
- 1-D tensors (norms) stay F32; 2-D tensors are F16, or Q8_0 for `q8_0` (a tensor whose rows are
  not a multiple of the 32-value Q8_0 block, e.g. a pruned MLP of width 816, stays F16, as llama.cpp does);
- tied embeddings write no `output.weight` (llama.cpp and transformers then reuse `token_embd`);
- the byte-level BPE tokenizer goes in as tokenizer.ggml.model "gpt2" with its tokens, token types
  (added special tokens CONTROL, other added tokens USER_DEFINED, padding rows UNUSED), merges,
  bos/eos/pad ids and a pre-tokenizer name llama.cpp knows; the chat template as tokenizer.chat_template.

So `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` / `AutoTokenizer.from_pretrained(dir,
gguf_file=...)` load it back, and `llama-cli -m` / `ollama create` run it. The Modelfile carries
the chat template rewritten in Go-template syntax, the stop tokens and the serving defaults.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.runtime.folder import MANIFEST_NAME, load_torch, read_family, read_manifest

log = logging.getLogger(__name__)

GgufType = Literal["f16", "q8_0"]
GGUF_TYPES: tuple[GgufType, ...] = ("f16", "q8_0")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
Q8_0_BLOCK = 32  # values per Q8_0 block: a row must be a multiple of it

# ChatML, the chat format every chatforge causal LM is trained on (chatforge.modeling.tokenizer)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# the same conversation in Ollama's Go-template syntax (.Messages carries the SYSTEM prompt too)
OLLAMA_CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


class GgufExportError(ValueError):
    """The folder cannot be exported to GGUF; the message says what is wrong and what would work."""


@dataclass(frozen=True)
class GgufFile:
    """One written GGUF file: where, which type, its size in bytes, and the tensors kept at F16 in a Q8_0 file."""

    path: Path
    gguf_type: GgufType
    size_bytes: int
    tensors: int
    parameters: int  # values written (tied embeddings once)
    f16_fallback: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelfileOptions:
    """What the Modelfile sets beside FROM and TEMPLATE: sampling (temperature 0 = greedy; `chatforge
    export` writes serve.temperature / serve.top_p, or a persona's), answer length (tokens), context
    (tokens), system prompt."""

    temperature: float = 0.0
    top_p: float = 1.0
    num_predict: int = 128
    num_ctx: int | None = None
    system: str | None = None


# ---- checks -------------------------------------------------------------------------------------


def check_exportable(folder: Path | str) -> dict[str, Any]:
    """Cheap checks before any weights are read; returns the folder's config.json as a dict.

    Raises ModelFolderError (chatforge.runtime.folder) when the folder is missing, is not a
    transformers model folder or has a broken chatforge.json; GgufExportError when it holds a
    classifier/translator or an ONNX-only export, or an architecture other than LlamaForCausalLM.
    """
    folder = Path(folder)
    family = read_family(folder, plain_ok=True)  # ModelFolderError: missing, no config.json, bad chatforge.json
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if (folder / MANIFEST_NAME).exists() and family != "causal_lm":
        raise GgufExportError(
            f"{folder}: a {family} model (chatforge.json family: {family}), not a causal LM; GGUF export needs a "
            "chat model (model.family: causal_lm). Export models/teacher, models/student or models/pruned of a "
            "causal_lm build instead."
        )
    archs = list(config.get("architectures") or [])
    arch = archs[0] if archs else config.get("model_type", "?")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GgufExportError(
            f"{folder}: architecture {arch!r} is not supported for GGUF export; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (what model.base smollm2-135m-instruct and scratch build). "
            "Use llama.cpp's convert_hf_to_gguf.py for other architectures."
        )
    if not any(folder.glob("*.safetensors")):
        onnx = " (it holds an ONNX export; export the float folder it was made from, e.g. models/pruned)" if any(
            folder.glob("*.onnx")) else ""
        raise GgufExportError(
            f"{folder}: no safetensors weights{onnx}. Give a folder with model.safetensors: models/teacher, "
            "models/student or models/pruned."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise GgufExportError(
            f"{folder}: rope type {rope_type!r} is not supported by this exporter (only plain RoPE). "
            "Use llama.cpp's convert_hf_to_gguf.py for scaled-RoPE models."
        )
    return config



# ---- tokenizer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer as GGUF stores it (lists indexed by token id, length = the model's vocab size)."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """The llama.cpp pre-tokenizer that splits text like this tokenizers pre-tokenizer.

    ByteLevel alone is GPT-2's split ("gpt-2"); single digits before it is SmolLM's ("smollm").
    chatforge's scratch tokenizer also isolates each CJK character first; llama.cpp has no name for
    that, and "smollm" gives the same tokens because its merges never join two CJK characters.
    """
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    if not kinds or kinds[-1] != "ByteLevel" or not steps[-1].get("use_regex", True):
        raise GgufExportError(
            f"tokenizer: pre-tokenizer {kinds or None} is not byte-level BPE with GPT-2 splitting; only "
            "byte-level BPE tokenizers (scratch, SmolLM2, GPT-2 style) can be exported to GGUF here."
        )
    head = kinds[:-1]
    digits = [s for s in steps if s.get("type") == "Digits"]
    if not head:
        return "gpt-2"
    cjk_split = [s for s in steps if s.get("type") == "Split" and s.get("behavior") == "Isolated"]
    if head in (["Digits"], ["Split", "Digits"]) and digits[0].get("individual_digits") and (
        head == ["Digits"] or cjk_split
    ):
        return "smollm"
    raise GgufExportError(
        f"tokenizer: pre-tokenizer sequence {kinds} has no llama.cpp equivalent here; supported: ByteLevel, "
        "Digits(individual) + ByteLevel, and chatforge's CJK split + Digits + ByteLevel."
    )


def read_vocab(tokenizer: Any, *, vocab_size: int) -> GgufVocab:
    """Turn a transformers fast byte-level BPE tokenizer into GGUF vocabulary metadata.

    `vocab_size` is the model's embedding rows; ids past the tokenizer's become "[PAD<id>]" UNUSED
    rows, as llama.cpp writes them. Raises GgufExportError for other tokenizer kinds.
    """
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE" or (state.get("decoder") or {}).get("type") != "ByteLevel":
        raise GgufExportError(
            f"tokenizer: a {model.get('type')} tokenizer with decoder {(state.get('decoder') or {}).get('type')}; "
            "only byte-level BPE (tokenizer.ggml.model gpt2) is exported. Retrain with model.base: scratch or "
            "use smollm2-135m-instruct."
        )
    pre = _pre_tokenizer_name(state.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise GgufExportError(
            f"tokenizer has ids up to {max(vocab.values())} but the model has {vocab_size} embedding rows; "
            "the folder's tokenizer does not belong to its model."
        )
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token, index in vocab.items():
        tokens[index] = token
        if index in added:
            types[index] = int(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            types[index] = int(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return GgufVocab(
        tokens=tokens, token_types=types, merges=merges, pre=pre, bos_id=bos, eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id, add_bos=bos is not None and bool(probe) and probe[0] == bos,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )


# ---- tensors ------------------------------------------------------------------------------------


def permute_rotary(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """convert_hf_to_gguf's LlamaModel.permute: rotate-half rows -> interleaved pairs, per head.

    `weights`: [heads * head_dim, ...] (a q/k projection weight or bias); returns the same shape.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensors(model: Any) -> list[tuple[str, Any]]:
    """(hf name, float32 numpy array) in the order llama.cpp expects; lm_head dropped when tied."""
    import torch

    state = model.state_dict()
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    config = model.config
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    out = []
    for name, tensor in state.items():
        if name == "lm_head.weight" and tied:
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            data = permute_rotary(data, heads, heads)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            data = permute_rotary(data, heads, kv_heads)
        out.append((name, data))
    return out


@dataclass(frozen=True)
class ExportPlan:
    """What the checks found, before any weights are read: the folder's manifest fields, its config,
    the Ollama template / default system prompt / stop tokens derived from its tokenizer."""

    folder: Path
    variant: str
    base: str | None
    parent: str | None
    config: dict[str, Any]
    template: str
    default_system: str | None
    stops: list[str]
    slot_placeholders: bool = False  # trained with chatforge slot placeholders (model.slots): see the model card


def plan_export(folder: Path | str) -> ExportPlan:
    """All cheap checks (check_exportable, the tokenizer kind, the chat template) so an export fails
    before the weights are loaded. Raises GgufExportError naming the problem."""
    from transformers import AutoTokenizer

    from chatforge.runtime import slots

    folder = Path(folder)
    config = check_exportable(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise GgufExportError(f"{folder}: the tokenizer cannot be loaded ({str(exc).splitlines()[0]}); the folder "
                              "needs tokenizer.json and tokenizer_config.json as the pipeline writes them.") from None
    vocab = read_vocab(tokenizer, vocab_size=max(int(config.get("vocab_size", 0)), len(tokenizer)))
    template, system = ollama_template(vocab.chat_template)
    manifest = read_manifest(folder) if (folder / MANIFEST_NAME).exists() else None  # checked by check_exportable
    eos = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else None
    return ExportPlan(
        folder=folder, variant=str((manifest.variant if manifest else None) or folder.name),
        base=manifest.base if manifest else None, parent=manifest.parent if manifest else None, config=config, template=template, default_system=system,
        stops=stop_tokens(vocab.tokens, eos),
        slot_placeholders=bool(getattr(tokenizer, "init_kwargs", {}).get(slots.CONFIG_KEY)),
    )


# ---- writing ------------------------------------------------------------------------------------


def export_gguf(
    folder: Path | str,
    target: Path | str,
    *,
    gguf_type: GgufType,
    name: str | None = None,
    license_id: str | None = None,
    tags: tuple[str, ...] = ("chatforge",),
) -> GgufFile:
    """Write the causal LM in `folder` to the GGUF file `target` (atomically) at `gguf_type`.

    `name` goes to general.name (default: the folder name). Raises GgufExportError for folders
    check_exportable refuses and for tokenizers or tensors llama.cpp's LLaMA graph has no place for.
    """
    import gguf
    import numpy as np
    import torch

    from chatforge.io import atomic_path

    if gguf_type not in GGUF_TYPES:
        raise GgufExportError(f"--type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}.")
    folder = Path(folder)
    check_exportable(folder)
    model, tokenizer, _ = load_torch(folder, family="causal_lm", dtype=torch.float32)
    config = model.config
    vocab = read_vocab(tokenizer, vocab_size=model.get_input_embeddings().weight.shape[0])
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))

    n_layers = config.num_hidden_layers
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    qtype = gguf.GGMLQuantizationType.F16 if gguf_type == "f16" else gguf.GGMLQuantizationType.Q8_0
    file_type = gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    target = Path(target)
    fallback: list[str] = []
    with atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or folder.name)
        if license_id:
            writer.add_license(license_id)
        writer.add_languages(["zh", "en"])
        writer.add_tags(list(tags))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        if head_dim * heads != config.hidden_size:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(len(vocab.tokens))
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.token_types)
        writer.add_token_merges(vocab.merges)
        if vocab.bos_id is not None:
            writer.add_bos_token_id(vocab.bos_id)
        if vocab.eos_id is not None:
            writer.add_eos_token_id(vocab.eos_id)
        if vocab.pad_id is not None:
            writer.add_pad_token_id(vocab.pad_id)
        writer.add_add_bos_token(vocab.add_bos)
        writer.add_add_eos_token(False)
        if vocab.chat_template:
            writer.add_chat_template(vocab.chat_template)

        count = parameters = 0
        for hf_name, data in _tensors(model):
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GgufExportError(
                    f"{folder}: tensor {hf_name!r} has no place in llama.cpp's LLaMA graph; this model is not a plain "
                    "LlamaForCausalLM. Use llama.cpp's convert_hf_to_gguf.py."
                )
            if data.ndim == 1:
                writer.add_tensor(gguf_name, data.astype(np.float32))
            elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % Q8_0_BLOCK == 0:
                writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            else:
                if qtype == gguf.GGMLQuantizationType.Q8_0:
                    fallback.append(gguf_name)  # rows not a multiple of 32: llama.cpp keeps these F16 too
                writer.add_tensor(gguf_name, data.astype(np.float16))
            count += 1
            parameters += int(data.size)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    if fallback:
        log.info("%s: %d tensors kept at F16 (rows not a multiple of %d): %s", target.name, len(fallback),
                 Q8_0_BLOCK, ", ".join(fallback[:4]))
    return GgufFile(target, gguf_type, target.stat().st_size, count, parameters, tuple(fallback))


# ---- chat template and Modelfile ----------------------------------------------------------------


def render_chat_template(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool,
                         special_tokens: dict[str, str | None] | None = None) -> str:
    """Render a Jinja chat template the way transformers' apply_chat_template does (sandboxed,
    trim_blocks, lstrip_blocks); `special_tokens` fills bos_token/eos_token/... variables."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise GgufExportError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **(special_tokens or {})
    )


def _chatml(messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def ollama_template(chat_template: str | None) -> tuple[str, str | None]:
    """The Go template (and default system prompt, if the Jinja template adds one) that renders the
    same prompt as `chat_template` for a conversation ending with a user turn.

    Probed, not parsed: the template is rendered on sample conversations and must give ChatML
    exactly; anything else raises GgufExportError (write the Modelfile TEMPLATE by hand then).
    """
    if not chat_template:
        raise GgufExportError("the tokenizer has no chat template; a chatforge causal LM folder always has one "
                              "(chat_template.jinja). Rebuild the folder with `dvc repro`.")
    user, assistant = {"role": "user", "content": "U1 查询"}, {"role": "assistant", "content": "A1 晴"}
    system = {"role": "system", "content": "S1 prompt"}
    with_system = [system, user, assistant, {"role": "user", "content": "U2"}]
    if render_chat_template(chat_template, with_system, add_generation_prompt=True) != _chatml(
            with_system, add_generation_prompt=True):
        raise GgufExportError(
            "the chat template is not ChatML (<|im_start|>role ... <|im_end|>), so no Ollama TEMPLATE is derived "
            "for it; export a chatforge-built folder or write the Modelfile TEMPLATE by hand."
        )
    plain = render_chat_template(chat_template, [user], add_generation_prompt=True)
    if plain == _chatml([user], add_generation_prompt=True):
        return OLLAMA_CHATML_TEMPLATE, None
    found = re.fullmatch(re.escape(f"{IM_START}system\n") + r"(.*?)" + re.escape(f"{IM_END}\n") + "(.*)", plain, re.DOTALL)
    if found and found.group(2) == _chatml([user], add_generation_prompt=True) and IM_END not in found.group(1):
        return OLLAMA_CHATML_TEMPLATE, found.group(1)
    raise GgufExportError("the chat template adds text that Ollama's TEMPLATE cannot reproduce; write the "
                          "Modelfile TEMPLATE by hand.")


def stop_tokens(tokenizer_tokens: list[str], eos: str | None) -> list[str]:
    """PARAMETER stop values: the end-of-turn token, the next turn's start, and <|endoftext|> when in the vocabulary."""
    stops = [t for t in (eos, IM_START, "<|endoftext|>") if t and t in tokenizer_tokens]
    return list(dict.fromkeys(stops))


def _quote(value: str) -> str:
    if '"""' in value:
        raise GgufExportError(f'a Modelfile value cannot contain """: {value[:40]!r}')
    return f'"""{value}"""'


def ollama_modelfile(gguf_name: str, *, template: str, stops: list[str], options: ModelfileOptions,
                     alternatives: tuple[str, ...] = ()) -> str:
    """The Modelfile text beside `gguf_name` (a file name in the same folder); `alternatives` are
    other exported files, listed as comments a user can swap in."""
    lines = [
        "# Ollama Modelfile written by `chatforge export`: `ollama create NAME -f Modelfile`, then `ollama run NAME`.",
        f"FROM ./{gguf_name}",
        *[f"# FROM ./{alt}" for alt in alternatives],
        f"TEMPLATE {_quote(template)}",
    ]
    if options.system:
        lines.append(f"SYSTEM {_quote(options.system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [
        f"PARAMETER temperature {options.temperature:g}",
        f"PARAMETER top_p {options.top_p:g}",
        f"PARAMETER num_predict {options.num_predict}",
    ]
    if options.num_ctx:
        lines.append(f"PARAMETER num_ctx {options.num_ctx}")
    return "\n".join(lines) + "\n"


def gguf_file_name(name: str, gguf_type: GgufType) -> str:
    """<name>-<type>.gguf, the file name `chatforge export` writes."""
    return f"{name}-{gguf_type}.gguf"


def greedy_answer_ids(model: Any, tokenizer: Any, conversation: list[dict[str, str]], max_new_tokens: int) -> list[int]:
    """The token ids of `model`'s greedy answer to `conversation` (messages rendered with the
    tokenizer's chat template and the generation prompt), at most `max_new_tokens` long; batch 1,
    on the model's device. The parity check between a source folder and its exported GGUF file."""
    import torch

    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return out[0, x.shape[1]:].tolist()


def token_agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """Top-1 token agreement of two sets of greedy answers, in [0, 1]: positions where both answers
    hold the same token, over the length of the longer answer, summed over answers. Raises
    ValueError when the two lists differ in length or every answer is empty."""
    if len(reference) != len(other):
        raise ValueError(f"token_agreement: {len(reference)} reference answers but {len(other)} to compare")
    same = sum(x == y for a, b in zip(reference, other, strict=True) for x, y in zip(a, b))
    total = sum(max(len(a), len(b)) for a, b in zip(reference, other, strict=True))
    if total == 0:
        raise ValueError("token_agreement: every answer is empty; generate at least one token")
    return same / total
