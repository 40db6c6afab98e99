"""Freezing and progressive unfreezing over a model's layer stack.

A model is seen as embeddings -> a stack of layers -> everything else (final norm, LM head,
pooler, classification head). `freeze: bottom` freezes the embeddings (optional) and the bottom N
layers; `freeze: all_but_head` freezes embeddings and every layer. Progressive unfreezing thaws K
more layers from the top of the frozen part at each event; embeddings stay frozen throughout.
The frozen state is a pure function of (step, epoch), so a resumed run recomputes it exactly.
Note: with tied input/output embeddings (SmolLM2) the LM head *is* the embedding matrix and is
frozen along with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

EMBEDDING_NAMES = ("embeddings", "embed_tokens", "embed_positions", "wte", "wpe", "word_embeddings")


@dataclass(frozen=True)
class LayerStack:
    embeddings: list[nn.Module]
    layers: list[nn.Module]


def find_layer_stack(model: nn.Module) -> LayerStack:
    """The longest nn.ModuleList is the layer stack (model.layers, encoder.layer, transformer.layer,
    ALBERT's shared layer groups); embedding modules are found by their usual names."""
    stacks = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise ValueError(f"{type(model).__name__}: no layer stack (nn.ModuleList) found to freeze")
    layers = max(stacks, key=len)
    layer_ids = {id(m) for layer in layers for m in layer.modules()}
    embeddings: list[nn.Module] = []
    for name, module in model.named_modules():
        wanted = name.rsplit(".", 1)[-1] in EMBEDDING_NAMES and id(module) not in layer_ids
        if wanted and not any(module in e.modules() for e in embeddings):
            embeddings.append(module)
    return LayerStack(embeddings, list(layers))


def frozen_layer_count(
    *,
    n_layers: int,
    mode: str,
    freeze_layers: int,
    unfreeze_layers: int,
    unfreeze_every_steps: int | None,
    unfreeze_every_epochs: int | None,
    step: int,
    epoch: int,
) -> int:
    """How many bottom layers are frozen at optimizer step `step` of epoch `epoch` (both 0-based)."""
    if mode == "none":
        return 0
    start = n_layers if mode == "all_but_head" else min(freeze_layers, n_layers)
    events = 0
    if unfreeze_layers and unfreeze_every_steps:
        events = step // unfreeze_every_steps
    elif unfreeze_layers and unfreeze_every_epochs:
        events = epoch // unfreeze_every_epochs
    return max(0, start - events * unfreeze_layers)


def apply_freezing(model: nn.Module, stack: LayerStack, *, frozen_layers: int, freeze_embeddings: bool) -> int:
    """Set requires_grad: everything trainable, then embeddings and layers[:frozen_layers] frozen.
    Returns the number of trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_embeddings:
        for module in stack.embeddings:
            module.requires_grad_(False)
    for layer in stack.layers[:frozen_layers]:
        layer.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
