"""Export a model folder to ONNX: causal LMs with past key/values (incremental decoding), classifiers plain.

The causal-LM graph is exported through a thin wrapper whose inputs are plain tensors —
input_ids, attention_mask, position_ids and the flattened past keys/values — and whose outputs are
logits and the present keys/values. That keeps the transformers cache objects out of the graph,
which is what lets the exporter trace it, and gives chatforge.runtime.decode a fixed contract.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# decoder-only families whose attention/cache layout (per-layer key/value of shape
# [batch, kv_heads, seq, head_dim]) the wrapper below handles; others are refused with a clear error
SUPPORTED_CAUSAL_LM = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
SUPPORTED_CLASSIFIER = ("BertForSequenceClassification", "DistilBertForSequenceClassification")
OPSET = 17


class ExportError(ValueError):
    """The model cannot be exported; the message says why and what would work."""


def _architecture(config: Any, *, key: str, model: Any = None) -> str:
    archs = list(getattr(config, "architectures", None) or [])
    arch = type(model).__name__ if model is not None else archs[0] if archs else type(config).__name__
    if arch not in SUPPORTED_CAUSAL_LM + SUPPORTED_CLASSIFIER:
        raise ExportError(
            f"{key}: architecture {arch!r} is not supported for ONNX export; supported: "
            f"{', '.join(SUPPORTED_CAUSAL_LM + SUPPORTED_CLASSIFIER)}. Pick another source model."
        )
    return arch


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def _kv_shape(config: Any) -> tuple[int, int]:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, head_dim


def _wrapper(model: Any) -> Any:
    import torch
    from transformers import DynamicCache

    num_layers = model.config.num_hidden_layers

    class CausalLMWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):  # type: ignore[no-untyped-def]
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(num_layers)]
            cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
            present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return CausalLMWithPast().eval()


def export_causal_lm(model: Any, target: Path, *, key: str = "quantize.source") -> Path:
    """Write `target` (a single .onnx file, weights inside) for a decoder-only LM with KV cache."""
    import torch

    _architecture(model.config, key=key, model=model)
    num_layers = model.config.num_hidden_layers
    kv_heads, head_dim = _kv_shape(model.config)
    # a 2-token prompt on a 3-token past: every dynamic axis gets a value distinct from the others
    # and from 1, so the tracer cannot fold any of them into a constant
    past = [torch.zeros(1, kv_heads, 3, head_dim) for _ in range(2 * num_layers)]
    args = (
        torch.tensor([[1, 2]], dtype=torch.long),
        torch.ones(1, 5, dtype=torch.long),
        torch.tensor([[3, 4]], dtype=torch.long),
        *past,
    )
    inputs = ["input_ids", "attention_mask", "position_ids", *past_names(num_layers)]
    outputs = ["logits", *present_names(num_layers)]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes.update({n: {0: "batch", 2: "past_sequence"} for n in past_names(num_layers)})
    axes.update({n: {0: "batch", 2: "total_sequence"} for n in present_names(num_layers)})
    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        # the TorchScript exporter: it handles the zero-length past of the first step, which the
        # dynamo exporter specialises away
        torch.onnx.export(
            _wrapper(model),
            args,
            str(target),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    if getattr(model.config, "tie_word_embeddings", False):
        _untie_copy(target)
    _check(target)
    return target


def _untie_copy(target: Path) -> None:
    """Constant folding stores a tied embedding twice (table + its transpose for lm_head); keep one."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(target))
    inits = {i.name: i for i in model.graph.initializer}
    gather = next((n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits), None)
    head = next((n for n in model.graph.node if n.op_type == "MatMul" and n.output[0] == "logits"), None)
    if gather is None or head is None or head.input[1] not in inits:
        return
    table = numpy_helper.to_array(inits[gather.input[0]])
    if not np.array_equal(numpy_helper.to_array(inits[head.input[1]]), table.T):
        return
    model.graph.initializer.remove(inits[head.input[1]])
    transposed = f"{gather.input[0]}.T"
    index = list(model.graph.node).index(head)
    model.graph.node.insert(index, helper.make_node("Transpose", [gather.input[0]], [transposed], perm=[1, 0]))
    head.input[1] = transposed
    onnx.save(model, str(target))


def export_classifier(model: Any, target: Path, *, key: str = "quantize.source") -> Path:
    import torch

    _architecture(model.config, key=key, model=model)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    args = (torch.tensor([[2, 5, 6, 3]], dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits().eval(),
            args,
            str(target),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    _check(target)
    return target


def _check(target: Path) -> None:
    import onnx

    # path-based check: also works for graphs above the 2 GB protobuf limit (external data)
    onnx.checker.check_model(str(target), full_check=True)
    log.info("exported %s (%.1f MB), onnx.checker ok", target, target.stat().st_size / 1e6)


def load_for_export(folder: Path, *, key: str = "quantize.source") -> tuple[Any, str]:
    """Load a float32 model from a pipeline folder with eager attention (traceable); return it and its family."""
    from transformers import AutoConfig

    from chatforge.runtime.folder import load_torch, read_family

    family = read_family(folder, key=key)
    _architecture(AutoConfig.from_pretrained(folder), key=key)
    model, _, _ = load_torch(folder, family=family, dtype="float32", attn_implementation="eager")
    return model, family
