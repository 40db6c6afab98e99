"""The one rule for where a model stage runs, and the ONNX Runtime providers check."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from chatforge.params import ParamsError, QuantizeParams, validate_section
from chatforge.runtime import device as dev


def test_the_stage_device_follows_trains_rule() -> None:
    # train: Accelerator(cpu=not torch.cuda.is_available()); every stage uses the same rule
    expected = "cpu" if not torch.cuda.is_available() else "cuda"
    assert dev.use_cpu() == (expected == "cpu")
    assert dev.stage_device().type == expected
    acc = dev.accelerator()
    assert acc.device.type == expected and acc.mixed_precision == "no"


def test_accelerate_use_cpu_forces_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert dev.use_cpu() is True
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    assert dev.use_cpu() is (not torch.cuda.is_available())


def test_cpu_cannot_take_fp16_and_unknown_precisions_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    with pytest.raises(dev.DeviceError, match=r"^distill.precision = fp16 needs a CUDA GPU"):
        dev.accelerator("fp16", key="distill.precision")
    with pytest.raises(dev.DeviceError, match=r"^x.precision = 'fp8': use one of fp32, bf16, fp16$"):
        dev.accelerator("fp8", key="x.precision")


def test_place_and_to_device_move_models_and_batches() -> None:
    model = torch.nn.Linear(2, 2)
    assert dev.place(model) is model
    assert next(model.parameters()).device.type == dev.stage_device().type
    batch = dev.to_device({"input_ids": torch.ones(1, 3, dtype=torch.long), "n": 3}, "cpu")
    assert batch["input_ids"].device.type == "cpu" and batch["n"] == 3


def test_onnx_providers_default_to_the_cpu() -> None:
    assert dev.onnx_providers() == ["CPUExecutionProvider"]
    assert QuantizeParams().providers == ["CPUExecutionProvider"]
    assert dev.onnx_providers(QuantizeParams().providers) == ["CPUExecutionProvider"]


def test_an_unavailable_provider_names_the_key_the_value_and_what_is_available() -> None:
    available = ort.get_available_providers()
    if "NoSuchExecutionProvider" in available:  # pragma: no cover - impossible
        pytest.skip("provider unexpectedly available")
    with pytest.raises(dev.DeviceError) as err:
        dev.onnx_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"], key="quantize.providers")
    assert str(err.value) == (
        "quantize.providers = ['NoSuchExecutionProvider', 'CPUExecutionProvider']: not available in this "
        f"onnxruntime: NoSuchExecutionProvider; available providers: {', '.join(available)}. List only available "
        "ones (GPU providers need the onnxruntime-gpu package), e.g. quantize.providers: [CPUExecutionProvider]."
    )
    with pytest.raises(dev.DeviceError, match=r"^quantize.providers = \[\]: lists no provider; available providers: "):
        dev.onnx_providers([])


def test_an_empty_providers_list_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match=r"quantize.providers = \[\]"):
        validate_section("quantize", {"providers": []}, QuantizeParams)


def test_onnx_session_runs_on_the_checked_providers(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "id.onnx"
    onnx.save(model, str(path))
    session = dev.onnx_session(path)
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(dev.DeviceError, match="serve.x = \\['CUDAExecutionProvider'\\]"):
        if "CUDAExecutionProvider" in ort.get_available_providers():  # pragma: no cover - GPU build
            raise dev.DeviceError("serve.x = ['CUDAExecutionProvider']")
        dev.onnx_session(path, providers=["CUDAExecutionProvider"], key="serve.x")
