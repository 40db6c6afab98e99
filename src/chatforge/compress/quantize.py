"""INT8 quantization of an exported ONNX model with onnxruntime, and the checks that it kept quality.

Scheme (default `weight_only`): every MatMul weight becomes 8-bit, block-wise (one scale per
`block_size` input channels of each output channel), via onnxruntime's MatMulNBits. With
`accuracy_level` 4 the activations are quantized per block at run time inside MLAS's 8-bit GEMM
(fast); with 0 they stay float, which is a little more exact but dequantizes the weights on every
call. Small causal LMs are hurt by activation quantization with one range per tensor — a few
hidden channels carry outliers — which is why the alternatives `dynamic` (per-tensor QDQ of weights
and activations) and `dynamic_per_channel` lose most of their top-1 agreement with the float model
(see README, "Compression"). They are kept as schemes for measurement only.

Tied embeddings: the output projection and the input embedding are one matrix. The int8 file stores
it once: the embedding lookup becomes a GatherBlockQuantized over the output projection's int8 blocks.
Other embedding tables (an encoder's word, position and token-type embeddings, an untied input
embedding) get their own 8-bit blocks: on an encoder classifier the word embedding is most of the file.

Gates (`quantize_gates`): the size ratio and the top-1 agreement with the float model count for both
families (next token for a causal LM, predicted intent for a classifier).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

Scheme = Literal["weight_only", "dynamic", "dynamic_per_channel"]


@dataclass(frozen=True)
class QuantizeOptions:
    scheme: Scheme = "weight_only"
    block_size: int = 32
    symmetric: bool = True
    # MatMulNBits compute: 4 = int8 activations through MLAS's 8-bit GEMM (fast); 0 = float activations,
    # which for 8-bit weights dequantizes every call (measured ~10x slower than the float model on CPU)
    accuracy_level: int = 4
    keep_float: tuple[str, ...] = ()  # MatMul node-name substrings to leave in float (e.g. "lm_head")
    embeddings: bool = True  # weight_only: embedding tables (Gather) in 8-bit blocks too (_quantize_gather_tables)


def _initializers(model: Any) -> dict[str, Any]:
    return {i.name: i for i in model.graph.initializer}


def _materialize_tied_head(model: Any) -> None:
    """The float export may feed lm_head through Transpose(embedding); make it a constant again."""
    from onnx import numpy_helper

    inits = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        src = producers.get(node.input[1])
        if src is not None and src.op_type == "Transpose" and src.input[0] in inits:
            weight = numpy_helper.to_array(inits[src.input[0]]).T.copy()
            name = f"{src.input[0]}.T"
            model.graph.initializer.append(numpy_helper.from_array(weight, name))
            node.input[1] = name


def _is_tied(model: Any) -> bool:
    """Does the float graph's output projection hold exactly the embedding table (transposed)?"""
    from onnx import numpy_helper

    inits = _initializers(model)
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits and n.input[1] == "input_ids"]
    heads = [n for n in model.graph.node if n.op_type == "MatMul" and n.output[0] == "logits" and n.input[1] in inits]
    if len(gathers) != 1 or len(heads) != 1:
        return False
    table = numpy_helper.to_array(inits[gathers[0].input[0]])
    head = numpy_helper.to_array(inits[heads[0].input[1]])
    return head.shape == table.T.shape and bool(np.array_equal(head, table.T))


def _share_tied_embedding(model: Any, *, block_size: int, symmetric: bool) -> bool:
    """Point the embedding Gather at the lm_head's int8 blocks (the caller checked they are one matrix)."""
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits and n.input[1] == "input_ids"]
    heads = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits"]
    if len(gathers) != 1 or len(heads) != 1:
        return False
    gather, head = gathers[0], heads[0]
    table = numpy_helper.to_array(inits[gather.input[0]])
    vocab, hidden = table.shape
    packed = numpy_helper.to_array(inits[head.input[1]])
    if packed.shape != (vocab, hidden // block_size, block_size) or hidden % block_size:
        return False
    numpy_helper.to_array(inits[head.input[2]]).reshape(vocab, hidden // block_size)
    if symmetric:
        zero = np.full((vocab, hidden // block_size), 128, dtype=np.uint8)
    else:
        zero = numpy_helper.to_array(inits[head.input[3]]).reshape(vocab, hidden // block_size)
    shape_name = f"{gather.name}_data_shape"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([vocab, hidden], dtype=np.int64), shape_name),
            numpy_helper.from_array(zero, f"{gather.name}_zero_points"),
        ]
    )
    # scales are small (1/block_size of the table): reshaped at run time like the data
    scale_shape = f"{gather.name}_scales_shape"
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([vocab, hidden // block_size], dtype=np.int64), scale_shape)
    )
    nodes = [
        helper.make_node("Reshape", [head.input[1], shape_name], [f"{gather.name}_data"], name=f"{gather.name}_data"),
        helper.make_node("Reshape", [head.input[2], scale_shape], [f"{gather.name}_scales"], name=f"{gather.name}_sc"),
        helper.make_node(
            "GatherBlockQuantized",
            [f"{gather.name}_data", gather.input[1], f"{gather.name}_scales", f"{gather.name}_zero_points"],
            list(gather.output),
            name=f"{gather.name}_Q8",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=block_size,
            bits=8,
        ),
    ]
    index = list(model.graph.node).index(gather)
    model.graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(index + offset, node)
    model.graph.initializer.remove(inits[gather.input[0]])
    return True


def _gemm_as_matmul(model: Any) -> int:
    """Gemm over a constant weight (an encoder's pooler and classification head) -> MatMul (+ Add of the
    bias), so the 8-bit MatMul quantizer takes them too. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    count = 0
    for gemm in [n for n in model.graph.node if n.op_type == "Gemm"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        if gemm.input[1] not in inits or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        weight = numpy_helper.to_array(inits[gemm.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T.copy()
        name = f"{gemm.input[1]}_kn"
        model.graph.initializer.append(numpy_helper.from_array(weight, name))
        has_bias = len(gemm.input) > 2 and gemm.input[2] != ""
        product = f"{gemm.name}_matmul_out" if has_bias else gemm.output[0]
        nodes = [helper.make_node("MatMul", [gemm.input[0], name], [product], name=f"{gemm.name}_MatMul")]
        if has_bias:
            nodes.append(helper.make_node("Add", [product, gemm.input[2]], [gemm.output[0]], name=f"{gemm.name}_Add"))
        index = list(model.graph.node).index(gemm)
        model.graph.node.remove(gemm)
        for offset, node in enumerate(nodes):
            model.graph.node.insert(index + offset, node)
        count += 1
    return count


def _quantize_gather_tables(model: Any, *, block_size: int) -> list[str]:
    """Every embedding lookup over a float table (Gather of a 2-D float initializer: word, position and
    token-type embeddings) becomes a GatherBlockQuantized over 8-bit blocks of `block_size` columns,
    symmetric (zero point 128, onnxruntime's default for 8 bits: not stored), one float scale per block. An encoder's word embedding is most of its
    bytes (MiniLM: 30,522 x 384 of 22.7M parameters); without this the INT8 file stays ~80% of float.
    Tables whose width is not a multiple of block_size stay float. Returns the initializers replaced."""
    from onnx import TensorProto, helper, numpy_helper

    inits = _initializers(model)
    done: list[str] = []
    for gather in [n for n in model.graph.node if n.op_type == "Gather"]:
        table = inits.get(gather.input[0])
        if table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2 or table.dims[1] % block_size:
            continue
        if any(a.name == "axis" and a.i != 0 for a in gather.attribute):
            continue
        weights = numpy_helper.to_array(table).astype(np.float32)
        rows, cols = weights.shape
        blocks = weights.reshape(rows, cols // block_size, block_size)
        scales = np.abs(blocks).max(axis=2) / 127.0
        scales[scales == 0] = 1.0
        q = np.clip(np.rint(blocks / scales[:, :, None]), -127, 127).astype(np.int16) + 128
        name = gather.input[0]
        model.graph.initializer.extend([
            numpy_helper.from_array(q.reshape(rows, cols).astype(np.uint8), f"{name}_q8"),
            numpy_helper.from_array(scales.astype(np.float32), f"{name}_q8_scales"),
        ])
        node = helper.make_node(
            "GatherBlockQuantized", [f"{name}_q8", gather.input[1], f"{name}_q8_scales"],
            list(gather.output), name=f"{gather.name}_Q8", domain="com.microsoft", gather_axis=0, quantize_axis=1,
            block_size=block_size, bits=8,
        )
        index = list(model.graph.node).index(gather)
        model.graph.node.remove(gather)
        model.graph.node.insert(index, node)
        done.append(name)
    return done


def _onnx_order(model: Any) -> None:
    """Drop nodes nobody reads (the float head's Transpose), then re-sort (new Reshapes precede users)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    produced = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise ValueError("ONNX graph has a cycle or a dangling input; re-export the float model.")
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
            pending.remove(n)
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def quantize_onnx(float_path: Path, target: Path, *, options: QuantizeOptions) -> dict[str, Any]:
    """Write the INT8 model for `float_path` to `target`; return what was done (for the metrics)."""
    import onnx

    if options.scheme != "weight_only":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(float_path),
            str(target),
            op_types_to_quantize=["MatMul"],
            per_channel=options.scheme == "dynamic_per_channel",
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_excluded(onnx.load(str(float_path)), options.keep_float),
        )
        return {"scheme": options.scheme, "tied_embedding_shared": False, "embeddings_quantized": 0}

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(float_path))
    _materialize_tied_head(model)
    if options.embeddings:
        _gemm_as_matmul(model)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=8,
        block_size=options.block_size,
        is_symmetric=options.symmetric,
        accuracy_level=options.accuracy_level or None,
        nodes_to_exclude=_excluded(model, options.keep_float),
        op_types_to_quantize=("MatMul",),
    )
    tied = _is_tied(model)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # logs every node
    quantizer.process()
    model = quantizer.model.model
    shared = tied and _share_tied_embedding(model, block_size=options.block_size, symmetric=options.symmetric)
    tables = _quantize_gather_tables(model, block_size=options.block_size) if options.embeddings else []
    _onnx_order(model)
    # drop initializers nothing reads any more (the float copies of quantized weights)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return {"scheme": "weight_only", "tied_embedding_shared": shared, "embeddings_quantized": len(tables)}


def _excluded(model: Any, patterns: tuple[str, ...]) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(p in n.name for p in patterns)]


# ------------------------------------------------------------------------------------- quality
def top1_agreement(float_path: Path, int8_path: Path, sequences: list[list[int]], *,
                   providers: Sequence[str] | None = None) -> float:
    """Share of positions where the INT8 model's most likely next token equals the float model's
    (teacher-forced logits of each sequence, chatforge.runtime.decode.OnnxCausalLM).

    Raises ValueError when `sequences` is empty."""
    from chatforge.runtime.decode import OnnxCausalLM

    if not sequences:
        raise ValueError("no sequences to compare: the test split gave no conversations")
    a, b = OnnxCausalLM(float_path, providers=providers), OnnxCausalLM(int8_path, providers=providers)
    same = total = 0
    for ids in sequences:
        fa = a.logits(ids).argmax(-1)
        fb = b.logits(ids).argmax(-1)
        same += int((fa == fb).sum())
        total += len(ids)
    return same / total


def classifier_logits(path: Path, encodings: list[dict[str, list[int]]], *,
                      providers: Sequence[str] | None = None) -> np.ndarray:
    """Logits [len(encodings), num_labels] of an exported classifier (chatforge.runtime.backends.OnnxClassifier)."""
    from chatforge.runtime.backends import OnnxClassifier

    model = OnnxClassifier(path, providers=providers)
    return np.stack([model.logits(enc) for enc in encodings])


# -------------------------------------------------------------------------------------- build
def quantize_gates(metrics: dict[str, Any], params: Any) -> dict[str, dict[str, Any]]:
    """Every measured gate, for both families: INT8 / float size ratio <= quantize.max_size_ratio and
    top-1 agreement (next-token argmax for a causal LM, predicted intent for a classifier) >=
    quantize.min_top1_agreement. {name: {value, limit, status}}; status pass | fail (an agreement
    that could not be measured, nan, fails: nothing shows the INT8 model is right)."""
    ratio, agreement = metrics.get("size_ratio"), metrics.get("top1_agreement")

    def status(ok: bool) -> str:
        return "pass" if ok else "fail"

    return {
        "size_ratio": {"value": ratio, "limit": f"<= {params.max_size_ratio}",
                       "status": status(ratio is not None and ratio <= params.max_size_ratio)},
        "top1_agreement": {"value": agreement, "limit": f">= {params.min_top1_agreement}",
                           "status": status(agreement is not None and agreement >= params.min_top1_agreement)},
    }


def gate_failures(metrics: dict[str, Any]) -> list[str]:
    """One line per failed quantize gate: name, value, limit."""
    lines = []
    for name, g in metrics.get("gates", {}).items():
        if g["status"] == "fail":
            value = "not measured" if g["value"] is None else f"{g['value']:.3f}"
            lines.append(f"{name} {value} (needs {g['limit']})")
    return lines


def build_onnx_folder(source_dir: Path, folder: Path, test_turns: Any, *, params: Any,
                      knobs: list[Any] | None = None) -> dict[str, Any]:
    """Fill `folder` (being built inside the caller's atomic_path) with model.onnx, model.int8.onnx,
    and, through chatforge.runtime.folder.publish_folder, the tokenizer, config, the source's carried
    files and a manifest derived from the source's;
    return the metrics: sizes, INT8-vs-float agreement, greedy equality, BLEU / accuracy, and
    `gates` (quantize_gates) with `gate_ok` (every gate passes). `knobs`, when given, receives the
    requested-vs-reached records (chatforge.knobs) the stage reports."""
    from chatforge.knobs import Reached

    knobs = [] if knobs is None else knobs
    import copy

    from transformers import AutoTokenizer

    from chatforge.compress.onnx_export import export_causal_lm, export_classifier, load_for_export
    from chatforge.runtime.conversation import conversations
    from chatforge.runtime.decode import ONNX_FLOAT_NAME, ONNX_INT8_NAME
    from chatforge.runtime.folder import CARRIED_FILES, derived_manifest, publish_folder

    model, family = load_for_export(source_dir, key="quantize.source")
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    config = copy.deepcopy(model.config)  # as loaded: tracing the export must not change what config.json says
    folder.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = folder / ONNX_FLOAT_NAME, folder / ONNX_INT8_NAME
    (export_causal_lm if family == "causal_lm" else export_classifier)(model, float_path, key="quantize.source")
    options = QuantizeOptions(scheme=params.scheme, block_size=params.block_size, symmetric=params.symmetric,
                              accuracy_level=params.accuracy_level, keep_float=tuple(params.keep_float))
    done = quantize_onnx(float_path, int8_path, options=options)
    # the folder is complete (graphs, config, tokenizer, the parent's files, manifest) before the
    # parity checks open it the way evaluate and serving will
    publish_folder(folder, derived_manifest(source_dir, variant="int8", details={"quantize": done}), tokenizer=tokenizer,
                   config=config, carry_from=source_dir, carry=(*CARRIED_FILES, "generation_config.json"),
                   in_place=True)
    float_bytes, int8_bytes = float_path.stat().st_size, int8_path.stat().st_size
    metrics: dict[str, Any] = {
        "family": family, **done, "block_size": params.block_size, "accuracy_level": params.accuracy_level,
        "float_mb": float_bytes / 1e6, "int8_mb": int8_bytes / 1e6, "size_ratio": int8_bytes / float_bytes,
        "size_reduction": 1 - int8_bytes / float_bytes,
    }
    convs = conversations(test_turns)[: params.eval_max_conversations]
    if family == "causal_lm":
        metrics.update(_causal_parity(model, tokenizer, folder, convs, params=params))
    else:
        metrics.update(_classifier_parity(model, tokenizer, float_path, int8_path, convs, providers=params.providers))
    metrics["gates"] = quantize_gates(metrics, params)
    metrics["gate_ok"] = all(g["status"] == "pass" for g in metrics["gates"].values())
    available = len(conversations(test_turns))
    knobs.append(Reached("quantize.eval_max_conversations", params.eval_max_conversations, len(convs),
                         "as requested" if len(convs) == params.eval_max_conversations
                         else f"the test split has {available} conversations"))
    return metrics


def _same_answers(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many answers have the same text and finish reason (their confidences, floats that differ
    between backends in the last digits, are not compared)."""
    return sum((x.text, x.finish_reason) == (y.text, y.finish_reason) for x, y in zip(a, b, strict=True))


def _causal_parity(model: Any, tokenizer: Any, folder: Path, convs: list[Any], *, params: Any) -> dict[str, Any]:
    from chatforge.runtime.conversation import tokenize_conversations
    from chatforge.runtime.decode import TorchGenerator, load_generator
    from chatforge.runtime.quality import (
        ANSWER_KEYS,
        answer_length_limit,
        answer_samples,
        generate_answers,
        retention,
        score_answers,
    )
    from chatforge.runtime.slots import gazetteer_of

    examples, _ = tokenize_conversations(convs, tokenizer, max_seq_len=params.max_seq_len, overlong="truncate")
    # an empty test split gives nan (visible in the metrics), not a crash
    agreement = top1_agreement(folder / "model.onnx", folder / "model.int8.onnx", [e.input_ids for e in examples],
                               providers=params.providers) if examples else float("nan")
    # the one answer-quality path: full greedy answers to every assistant turn of the sampled
    # conversations, the length limit from the references, scored the way evaluate scores them
    samples, _ = answer_samples(convs, max_per_lang=None, seed=0)
    limit = answer_length_limit(tokenizer, samples, cap=params.max_new_tokens)
    from chatforge.runtime.device import place

    # torch on the accelerator when there is one (the export is done); ONNX on quantize.providers
    runners = {"torch": TorchGenerator(place(model), tokenizer, fingerprint="torch"),
               "float": load_generator(folder, backend="onnx", providers=params.providers),
               "int8": load_generator(folder, backend="onnx_int8", providers=params.providers)}
    # torch decodes the prompts in batches (same tokens as one at a time); ONNX one at a time
    answers = {name: generate_answers(runner, samples, max_new_tokens=limit, desc=f"{name} answers")
               for name, runner in runners.items()}
    n = max(1, len(samples))
    out: dict[str, Any] = {
        "top1_agreement": agreement,
        "teacher_forced_sequences": len(examples),
        "greedy_prompts": len(samples),
        "max_new_tokens": limit,
        "greedy_equal_rate_int8_vs_float": _same_answers(answers["float"], answers["int8"]) / n,
        "greedy_equal_rate_onnx_vs_torch": _same_answers(answers["torch"], answers["float"]) / n,
    }
    if samples:
        gazetteer = gazetteer_of(tokenizer)
        scores = {name: score_answers(samples, answers[name], gazetteer=gazetteer) for name in ("float", "int8")}
        for name, sc in scores.items():
            out.update({f"{k}_{name}": sc[k] for k in ANSWER_KEYS})
        out.update(retention(scores["int8"], scores["float"]))
    return out


def _classifier_parity(model: Any, tokenizer: Any, float_path: Path, int8_path: Path, convs: list[Any], *,
                       providers: Sequence[str] | None = None) -> dict[str, Any]:
    from chatforge.modeling.classifier import classifier_text

    id2label = model.config.id2label
    rows = [(classifier_text(c, "first_user"), c.intent) for c in convs if c.intent in set(id2label.values())]
    if not rows:
        return {"accuracy_float": float("nan"), "accuracy_int8": float("nan"), "accuracy_drop": float("nan"), "top1_agreement": float("nan")}
    encodings = [dict(tokenizer(text)) for text, _ in rows]
    pred_float = classifier_logits(float_path, encodings, providers=providers).argmax(-1)
    pred_int8 = classifier_logits(int8_path, encodings, providers=providers).argmax(-1)
    truth = [label for _, label in rows]
    acc_float = float(np.mean([id2label[int(p)] == t for p, t in zip(pred_float, truth, strict=True)]))
    acc_int8 = float(np.mean([id2label[int(p)] == t for p, t in zip(pred_int8, truth, strict=True)]))
    return {"accuracy_float": acc_float, "accuracy_int8": acc_int8, "accuracy_drop": acc_float - acc_int8,
            "top1_agreement": float(np.mean(pred_float == pred_int8)), "test_conversations": len(rows)}
