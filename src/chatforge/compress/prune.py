"""Structural pruning with torch-pruning: fewer MLP channels and attention heads, a really smaller model.

MLP channels: torch-pruning's dependency graph couples gate/up output channels with down_proj input
channels; its group importance (first-order Taylor over a few calibration batches,
or weight magnitude)
ranks them and the group prune slices all three at once. Every layer loses the same number of
channels: transformers configs have one `intermediate_size` for all layers, and the output must
reload with plain `from_pretrained`.

Attention heads (LLaMA-style decoders): the graph trace of attention couples everything through the
hidden size, so heads are ranked here (norm of each head's q_proj rows and o_proj columns) and sliced
with torch-pruning's linear pruning functions. Under GQA the same number of query heads is removed
from every KV group, so `num_key_value_heads` and `head_dim` stay and the groups stay equal. Encoder
classifiers (BERT) tie head size to hidden size / heads, so only their MLP is pruned.

Magnitude pruning (optional) zeroes |w| < threshold in the decoder/encoder linear layers. The dense
file does not shrink from it: sparsity is reported, not claimed as size.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch

from chatforge.modeling.data import conversations
from chatforge.modeling.distill import (
    CompressError,
    fit,
    latency,
    load_model,
    make_batches,
    open_source,
    parameter_count,
    quality,
    size_mb,
    target_logits,
)
from chatforge.modeling.quality import retention as answer_retention

log = logging.getLogger(__name__)


def read_family(folder: Path, *, key: str) -> str:
    return open_source(folder, key=key).family


@dataclass
class LayerParts:
    mlp_root: Any  # the Linear whose output channels are the MLP width (gate_proj / intermediate.dense)
    q: Any = None
    k: Any = None
    v: Any = None
    o: Any = None


def layer_parts(model: Any) -> list[LayerParts]:
    arch = type(model).__name__
    if hasattr(model, "model") and hasattr(model.model, "layers") and hasattr(model.model.layers[0], "mlp"):
        return [LayerParts(layer.mlp.gate_proj, layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                           layer.self_attn.o_proj) for layer in model.model.layers]
    if hasattr(model, "bert"):
        return [LayerParts(layer.intermediate.dense) for layer in model.bert.encoder.layer]
    if hasattr(model, "distilbert"):
        return [LayerParts(layer.ffn.lin1) for layer in model.distilbert.transformer.layer]
    raise CompressError(f"prune.source: architecture {arch} is not supported for pruning (LLaMA-style decoders, BERT, DistilBERT)")


def _round_keep(width: int, ratio: float, round_to: int) -> int:
    keep = max(round_to, round(width * (1 - ratio) / round_to) * round_to)
    return min(width, keep)


def prune_mlp(model: Any, examples: list[dict[str, torch.Tensor]], *, ratio: float, criterion: str, round_to: int,
              family: str) -> tuple[int, int]:
    """Remove the least important MLP channels in every layer; return (width before, after).

    `taylor` scores a channel group by |w * dL/dw| with the gradient summed over `examples` (the
    calibration batches); `magnitude` by the L2 norm of its weights (the first example only traces
    the graph). On the default SmolLM2 student, removing 10% of MLP channels before any recovery
    moved validation perplexity from 4.05 to 4.59 with taylor and to 360 with magnitude: the weight
    norm of a channel says little about what it contributes in a small LM.
    """
    import torch_pruning as tp

    parts = layer_parts(model)
    width = parts[0].mlp_root.out_features
    keep = _round_keep(width, ratio, round_to)
    if keep == width:
        return width, width
    if criterion == "taylor":
        model.zero_grad()
        for example in examples:
            logits, targets = target_logits(model, example, family)
            (torch.nn.functional.cross_entropy(logits, targets) / len(examples)).backward()
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    inputs = {k: v for k, v in examples[0].items() if k in ("input_ids", "attention_mask")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tp warns about norm weights it will not touch here
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, output_transform=lambda out: out.logits)
        for part in parts:
            everything = list(range(part.mlp_root.out_features))
            scores = importance(graph.get_pruning_group(part.mlp_root, tp.prune_linear_out_channels, idxs=everything))
            drop = torch.argsort(scores)[: width - keep].tolist()
            graph.get_pruning_group(part.mlp_root, tp.prune_linear_out_channels, idxs=sorted(drop)).prune()
    model.zero_grad(set_to_none=True)
    return width, keep


def prune_heads(model: Any, *, ratio: float) -> tuple[int, int]:
    """Remove the same number of query heads from every KV group of every layer; return (heads before, after)."""
    import torch_pruning as tp

    config = model.config
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    group = heads // kv
    if group == 1:
        return heads, heads  # MHA: removing a head would change the KV layout too; left alone
    drop_per_group = min(group - 1, round(group * ratio))
    if drop_per_group == 0:
        return heads, heads
    for part in layer_parts(model):
        q = part.q.weight.detach().view(heads, head_dim, -1)
        o = part.o.weight.detach().view(-1, heads, head_dim).transpose(0, 1)
        score = q.pow(2).sum(dim=(1, 2)) + o.pow(2).sum(dim=(1, 2))  # per head
        dropped: list[int] = []
        for g in range(kv):
            members = torch.arange(g * group, (g + 1) * group)
            dropped += members[torch.argsort(score[members])[:drop_per_group]].tolist()
        channels = [h * head_dim + d for h in sorted(dropped) for d in range(head_dim)]
        tp.prune_linear_out_channels(part.q, idxs=channels)
        tp.prune_linear_in_channels(part.o, idxs=channels)
    config.head_dim = head_dim  # no longer hidden_size / heads
    config.num_attention_heads = heads - kv * drop_per_group
    return heads, config.num_attention_heads


def magnitude_masks(model: Any, *, threshold: float, keep_layers: list[int]) -> tuple[dict[str, torch.Tensor], float]:
    """Zero |w| < threshold in transformer-layer Linear weights (not embeddings/head); return masks, sparsity."""
    import re

    masks: dict[str, torch.Tensor] = {}
    zero = total = 0
    layer_re = re.compile(r"\.(?:layers|layer)\.(\d+)\.")
    with torch.no_grad():
        for name, module in model.named_modules():
            found = layer_re.search(f".{name}.")
            if not isinstance(module, torch.nn.Linear) or found is None or int(found.group(1)) in keep_layers:
                continue
            mask = (module.weight.abs() >= threshold).to(module.weight.dtype)
            module.weight.mul_(mask)
            masks[f"{name}.weight"] = mask
            zero += int((mask == 0).sum())
            total += mask.numel()
    return masks, (zero / total if total else 0.0)


@dataclass
class PruneOutcome:
    model: Any
    tokenizer: Any
    family: str
    metrics: dict[str, Any]


def prune(source_dir: Path, train_turns: pl.DataFrame, val_turns: pl.DataFrame, *, params: Any) -> PruneOutcome:
    """Prune the model in `source_dir` with `params` (a PruneParams); measure before and after."""
    family = read_family(source_dir, key="prune.source")
    model, tokenizer = load_model(source_dir, family)
    layer_parts(model)  # unsupported architecture: fail before any work
    train_convs, val_convs = conversations(train_turns), conversations(val_turns)[: params.eval_max_conversations]
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)] if family == "classifier" else None
    batches = make_batches(train_convs, tokenizer, family=family, labels=labels, max_seq_len=params.max_seq_len, batch_size=params.batch_size)
    if not batches:
        raise CompressError("prune: the train split gave no example after tokenization; check prune.max_seq_len and the data")

    def measure(m: Any) -> dict[str, float]:
        q = quality(m, tokenizer, val_convs, family=family, labels=labels, max_seq_len=params.max_seq_len,
                    bleu_samples=params.bleu_samples, max_new_tokens=params.max_new_tokens, seed=params.seed)
        q.update(latency(m, tokenizer, val_convs, family=family, requests=params.latency_requests, max_new_tokens=params.max_new_tokens))
        return {**q, "params": parameter_count(m), "size_mb": size_mb(m)}

    before = measure(model)
    # calibration batches spread over the train split (taylor sums their gradients)
    step = max(1, len(batches) // params.calibration_batches)
    calibration = batches[::step][: params.calibration_batches]
    width = prune_mlp(model, calibration, ratio=params.ratio, criterion=params.criterion,
                      round_to=params.round_to, family=family)
    model.config.intermediate_size = width[1]
    if hasattr(model.config, "hidden_dim") and family == "classifier":  # DistilBERT's name for it
        model.config.hidden_dim = width[1]
    heads = prune_heads(model, ratio=params.ratio) if params.heads and family == "causal_lm" else None
    # round-trip through save/from_pretrained: fresh modules whose attributes match the new shapes,
    # and proof that the output reloads as an ordinary transformers folder
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        from chatforge.modeling.manifest import MANIFEST_NAME

        (Path(tmp) / MANIFEST_NAME).write_text((source_dir / MANIFEST_NAME).read_text(encoding="utf-8"), encoding="utf-8")
        model, _ = load_model(Path(tmp), family)
    masks, sparsity = ({}, 0.0)
    if params.magnitude_threshold is not None:
        masks, sparsity = magnitude_masks(model, threshold=params.magnitude_threshold, keep_layers=params.keep_layers)
    losses = fit(model, batches, family=family, steps=params.recovery_steps, lr=params.lr, seed=params.seed,
                 masks=masks, desc="prune recovery") if params.recovery_steps else []
    after = measure(model)
    metrics: dict[str, Any] = {f"before_{k}": v for k, v in before.items()} | {f"after_{k}": v for k, v in after.items()}
    metrics.update(
        ratio=params.ratio, criterion=params.criterion,
        params_reduction=1 - after["params"] / before["params"],
        mlp_width_before=width[0], mlp_width_after=width[1],
        heads_before=heads[0] if heads else None, heads_after=heads[1] if heads else None,
        magnitude_threshold=params.magnitude_threshold, magnitude_sparsity=sparsity,
        recovery_steps=len(losses), recovery_loss_first=losses[0] if losses else None,
        recovery_loss_last=losses[-1] if losses else None, source=params.source,
    )
    if family == "causal_lm":
        metrics.update(answer_retention(after, before))
    return PruneOutcome(model, tokenizer, family, metrics)
