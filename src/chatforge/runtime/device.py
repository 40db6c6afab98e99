"""Where a model stage runs: the accelerator when there is one, else the CPU — one rule for every stage.

The rule is train's: accelerate's device, on the CPU when CUDA is missing or accelerate's own
switch ACCELERATE_USE_CPU=1 is set (it forces train onto the CPU too). Training loops (train,
distill, prune recovery, translator) get an `accelerate.Accelerator` from `accelerator()`: the
model placed on `acc.device`, the optimizer through `acc.prepare_optimizer`, forwards under
`acc.autocast()`, `acc.backward(loss)`. Inference moves the model with `place()` and its inputs
with `to_device()`; numbers come back to the CPU for metrics. On the CPU every step is the plain
torch one, so CPU results are bit-identical to a loop without accelerate.

ONNX Runtime sessions run on the execution providers `quantize.providers` lists (default
[CPUExecutionProvider]); `onnx_providers` checks the names against the installed onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and accelerate load when a function runs (serving may import this without them)
    import torch

CPU_PROVIDER = "CPUExecutionProvider"
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # params value -> accelerate mixed_precision


class DeviceError(ValueError):
    """The device or runtime a setting asks for is not available here; the message names the key."""


def use_cpu() -> bool:
    """True when stages run on the CPU: no CUDA device, or ACCELERATE_USE_CPU set (accelerate's switch)."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")


def accelerator(precision: str = "fp32", *, key: str = "precision") -> Any:
    """The `accelerate.Accelerator` a training loop runs under (train's settings: CPU unless CUDA)."""
    from accelerate import Accelerator

    if precision not in PRECISIONS:
        raise DeviceError(f"{key} = {precision!r}: use one of {', '.join(PRECISIONS)}")
    cpu = use_cpu()
    if precision == "fp16" and cpu:
        raise DeviceError(f"{key} = fp16 needs a CUDA GPU (loss scaling); use fp32 or bf16 on CPU.")
    return Accelerator(cpu=cpu, mixed_precision=PRECISIONS[precision])


def stage_device() -> torch.device:
    """The device inference in a stage runs on (accelerate's PartialState, under the same rule)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu()).device


def place(model: Any, device: torch.device | str | None = None) -> Any:
    """`model` moved to `device` (default: the stage device); returns the model for chaining."""
    return model.to(device if device is not None else stage_device())


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A batch with every tensor on `device` (other values unchanged)."""
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def onnx_providers(names: Sequence[str] | None = None, *, key: str = "quantize.providers") -> list[str]:
    """The ONNX Runtime execution providers to use, checked against the installed onnxruntime;
    None means [CPUExecutionProvider]. `key` is the params key the names came from."""
    import onnxruntime as ort

    chosen = [CPU_PROVIDER] if names is None else list(names)
    available = list(ort.get_available_providers())
    missing = [n for n in chosen if n not in available]
    if not chosen or missing:
        what = "lists no provider" if not chosen else f"not available in this onnxruntime: {', '.join(missing)}"
        raise DeviceError(
            f"{key} = {chosen}: {what}; available providers: {', '.join(available)}. "
            f"List only available ones (GPU providers need the onnxruntime-gpu package), e.g. {key}: [{CPU_PROVIDER}]."
        )
    return chosen


def onnx_session(path: Path | str, *, providers: Sequence[str] | None = None, options: Any = None,
                 key: str = "quantize.providers") -> Any:
    """An onnxruntime.InferenceSession for `path` on the checked `providers` (default CPU)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), options, providers=onnx_providers(providers, key=key))


__all__ = [
    "CPU_PROVIDER",
    "DeviceError",
    "accelerator",
    "onnx_providers",
    "onnx_session",
    "place",
    "stage_device",
    "to_device",
    "use_cpu",
]
