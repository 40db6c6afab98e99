"""The shared generation path: decoding rules, streaming, and torch/ONNX parity on a tiny model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chatforge.runtime.decode import (
    Generation,
    GenerationConfig,
    TorchGenerator,
    choose_token,
    load_generator,
)
from chatforge.runtime.folder import ModelFolderError

torch.set_num_threads(1)
USER = [{"role": "user", "content": "查询北京天气"}]
PROMPTS = [USER, [{"role": "user", "content": "book a flight to Shanghai please"}],
           [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]]


@pytest.fixture(scope="module")
def onnx_lm(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatforge.compress.onnx_export import export_causal_lm, load_for_export

    folder = tmp_path_factory.mktemp("gen") / "lm"
    shutil.copytree(tiny_causal_lm, folder)
    model, _ = load_for_export(folder)
    export_causal_lm(model, folder / "model.onnx")
    return folder


def test_greedy_is_deterministic_and_picks_argmax(tiny_causal_lm: Path) -> None:
    gen = load_generator(tiny_causal_lm, backend="torch")
    a = gen.generate(USER, GenerationConfig(max_new_tokens=12))
    b = gen.generate(USER, GenerationConfig(max_new_tokens=12))
    assert a == b and len(a.token_ids) == 12 and a.finish_reason == "length"
    # the first token is the argmax of the model's next-token logits after the chat prompt
    ids = gen.prompt_ids(USER)
    with torch.no_grad():
        logits = gen.model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert a.token_ids[0] == int(logits.argmax())
    assert a.token_logprobs[0] == pytest.approx(float(torch.log_softmax(logits.double(), -1).max()), abs=1e-5)
    assert a.confidence == pytest.approx(math.exp(sum(a.token_logprobs) / 12))


def test_sampling_is_reproducible_with_a_seed(tiny_causal_lm: Path) -> None:
    gen = load_generator(tiny_causal_lm, backend="torch")
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    a, b = gen.generate(USER, cfg), gen.generate(USER, cfg)
    c = gen.generate(USER, GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=8))
    assert a == b
    assert a.token_ids != c.token_ids


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    picks = {choose_token(logits, GenerationConfig(temperature=1.0, top_p=0.7), rng)[0] for _ in range(300)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are never sampled
    token, logprob = choose_token(logits, GenerationConfig(), rng)
    assert token == 0 and logprob == pytest.approx(math.log(0.5))


def test_stop_strings_cut_the_text(tiny_causal_lm: Path) -> None:
    gen = load_generator(tiny_causal_lm, backend="torch")
    cfg = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=3)
    full = gen.generate(USER, cfg)
    assert len(full.text) > 6
    stop = full.text[4:6]
    cut = gen.generate(USER, GenerationConfig(max_new_tokens=24, temperature=1.0, seed=3, stop_strings=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert stop not in cut.text


def test_eos_stops_generation(tiny_causal_lm: Path) -> None:
    gen = load_generator(tiny_causal_lm, backend="torch")
    first = gen.generate(USER, GenerationConfig(max_new_tokens=1)).token_ids[0]
    gen.eos_ids = {first}  # make the model's first greedy token the end of turn
    out = gen.generate(USER, GenerationConfig(max_new_tokens=10))
    assert out.finish_reason == "stop" and out.token_ids == [] and out.text == "" and out.confidence == 0.0


@pytest.mark.parametrize("stop", [(), ("\n\n",)])
def test_stream_deltas_join_to_the_full_text(tiny_causal_lm: Path, stop: tuple[str, ...]) -> None:
    gen = load_generator(tiny_causal_lm, backend="torch")
    cfg = GenerationConfig(max_new_tokens=20, temperature=1.2, seed=11, stop_strings=stop)
    deltas = list(gen.stream(USER, cfg))
    assert gen.last is not None
    assert "".join(deltas) == gen.last.text == gen.generate(USER, cfg).text
    assert all(deltas)


def test_onnx_greedy_equals_torch_token_for_token(tiny_causal_lm: Path, onnx_lm: Path) -> None:
    torch_gen = load_generator(tiny_causal_lm, backend="torch")
    onnx_gen = load_generator(onnx_lm, backend="onnx")
    for prompt in PROMPTS:
        for cfg in (GenerationConfig(max_new_tokens=24), GenerationConfig(max_new_tokens=24, temperature=0.8, seed=5)):
            a, b = torch_gen.generate(prompt, cfg), onnx_gen.generate(prompt, cfg)
            assert a.token_ids == b.token_ids
            np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)


def test_logprobs_agree_between_torch_and_onnx_and_with_decoding(tiny_causal_lm: Path, onnx_lm: Path) -> None:
    """`logprobs` scores a whole sequence in one pass: torch and ONNX agree, and the scores of a greedy
    answer are the log-probabilities decoding recorded for its tokens."""
    from chatforge.runtime.decode import OnnxCausalLM

    torch_gen, onnx_gen = load_generator(tiny_causal_lm, backend="torch"), load_generator(onnx_lm, backend="onnx")
    prompt_ids = torch_gen.prompt_ids(USER)
    answer = torch_gen.generate(USER, GenerationConfig(max_new_tokens=6))
    ids = [*prompt_ids, *answer.token_ids]
    a, b = torch_gen.logprobs(ids), onnx_gen.logprobs(ids)
    assert a.shape == b.shape == (len(ids) - 1,)
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(a[len(prompt_ids) - 1:], answer.token_logprobs, atol=1e-4)
    logits = OnnxCausalLM(onnx_lm / "model.onnx").logits(ids)
    assert logits.shape[0] == len(ids) and logits.dtype == np.float32
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    bad = onnx_lm.parent / "identity.onnx"
    onnx.save(helper.make_model(graph), str(bad))
    with pytest.raises(ValueError, match=r"not a chatforge ONNX export .* `dvc repro quantize`"):
        OnnxCausalLM(bad)


def test_auto_backend_prefers_onnx_and_fingerprints_differ(tiny_causal_lm: Path, onnx_lm: Path) -> None:
    assert load_generator(onnx_lm).fingerprint.startswith("onnx:")
    assert load_generator(tiny_causal_lm).fingerprint.startswith("torch:")
    assert isinstance(load_generator(onnx_lm).generate(USER, GenerationConfig(max_new_tokens=2)), Generation)


def test_bad_folders_are_clear_errors(tiny_classifier: Path, tiny_causal_lm: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_generator(tmp_path / "missing")
    with pytest.raises(ValueError, match="classifier model cannot generate"):
        load_generator(tiny_classifier)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="not a model folder"):
        load_generator(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="model.int8.onnx: missing"):
        load_generator(tiny_causal_lm, backend="onnx_int8")
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="messages is empty"):
        load_generator(tiny_causal_lm, backend="torch").generate([], GenerationConfig())
    assert json.loads((tiny_causal_lm / "chatforge.json").read_text())["family"] == "causal_lm"


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batched_greedy_equals_one_at_a_time(tiny_causal_lm: Path, batch_size: int) -> None:
    gen = load_generator(tiny_causal_lm, backend="torch")
    prompts = PROMPTS + [[{"role": "user", "content": "退货要多久？我上周买的耳机还没有收到退款。"}]]
    assert len({len(gen.prompt_ids(p)) for p in prompts}) == len(prompts)  # left padding really happens
    cfg = GenerationConfig(max_new_tokens=16)
    single = [gen.generate(p, cfg) for p in prompts]
    many = gen.generate_many(prompts, cfg, batch_size=batch_size)
    assert [g.token_ids for g in many] == [g.token_ids for g in single]
    assert [g.text for g in many] == [g.text for g in single]
    assert [g.finish_reason for g in many] == [g.finish_reason for g in single]
    for a, b in zip(many, single, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_batched_rows_end_on_their_own_eos_and_stop_strings(tiny_causal_lm: Path) -> None:
    gen = load_generator(tiny_causal_lm, backend="torch")
    cfg = GenerationConfig(max_new_tokens=12)
    free = [gen.generate(p, cfg) for p in PROMPTS]
    # the second prompt's 4th greedy token ends its reply; a stop string taken from the first reply
    gen.eos_ids = gen.eos_ids | {free[1].token_ids[3]}
    stop = free[0].text[2:4]
    cfg = GenerationConfig(max_new_tokens=12, stop_strings=(stop,))
    single = [gen.generate(p, cfg) for p in PROMPTS]
    many = gen.generate_many(PROMPTS, cfg, batch_size=3)
    assert [(g.token_ids, g.text, g.finish_reason) for g in many] == [(g.token_ids, g.text, g.finish_reason) for g in single]
    assert many[1].finish_reason == "stop" and len(many[1].token_ids) <= 3
    assert many[0].finish_reason == "stop" and stop not in many[0].text


def test_generate_many_keeps_sampling_and_onnx_per_request(tiny_causal_lm: Path, onnx_lm: Path) -> None:
    torch_gen, onnx_gen = load_generator(tiny_causal_lm, backend="torch"), load_generator(onnx_lm, backend="onnx")
    sampled = GenerationConfig(max_new_tokens=10, temperature=0.9, seed=4)
    assert torch_gen.generate_many(PROMPTS, sampled) == [torch_gen.generate(p, sampled) for p in PROMPTS]
    greedy = GenerationConfig(max_new_tokens=10)
    assert [g.token_ids for g in onnx_gen.generate_many(PROMPTS, greedy)] == [
        g.token_ids for g in torch_gen.generate_many(PROMPTS, greedy, batch_size=3)
    ]


def test_a_reply_cut_by_the_length_limit_drops_a_half_character() -> None:
    """Byte-level tokens split 问 into three bytes: a reply cut after two of them must not end in U+FFFD."""
    from tinymodels import build_tiny_tokenizer

    from chatforge.runtime.decode import _Reply

    tok = build_tiny_tokenizer()
    ids = tok("请问", add_special_tokens=False)["input_ids"]
    whole = len(tok("请", add_special_tokens=False)["input_ids"])
    assert len(ids) > whole + 1  # 问 is more than one byte token here
    reply = _Reply(tok, {tok.eos_token_id}, GenerationConfig(max_new_tokens=len(ids) - 1))
    for t in ids[:-1]:
        reply.push(t, 0.0)
    assert reply.text.endswith("\ufffd")  # what the decoder gives mid-character
    result = reply.result()
    assert result.finish_reason == "length" and result.text == "请"


def test_slot_placeholders_are_filled_from_the_prompt(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """A model whose tokenizer carries slot placeholders: the prompt is encoded, the reply decoded."""
    from transformers import AutoTokenizer

    from chatforge.runtime import slots
    from chatforge.runtime.decode import _Reply

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    slots.enable(tok, slots.slot_config(["number", "city"], max_per_kind=2, gazetteer={"zh": {"city": ["北京"]}}))
    gen = TorchGenerator.__new__(TorchGenerator)
    gen.tokenizer = tok
    ids, values = gen.encode_prompt([{"role": "user", "content": "订单2024061580787改到北京"}])
    assert values == {"<number_1>": "2024061580787", "<city_1>": "北京"}
    assert "<number_1>" in tok.decode(ids) and "2024061580787" not in tok.decode(ids)
    reply = _Reply(tok, {tok.eos_token_id}, GenerationConfig(), values)
    for t in tok("订单<number_1>已改为<city_1>", add_special_tokens=False)["input_ids"]:
        reply.push(t, 0.0)
    assert reply.result().text == "订单2024061580787已改为北京"


MIXED = [GenerationConfig(max_new_tokens=12), GenerationConfig(max_new_tokens=5, temperature=0.9, seed=4, top_logprobs=2),
         GenerationConfig(max_new_tokens=9, temperature=1.1, top_p=0.8, seed=11)]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_generate_batch_equals_one_at_a_time_with_per_request_sampling(tiny_causal_lm: Path, onnx_lm: Path,
                                                                       backend: str) -> None:
    from chatforge.runtime.decode import BatchRequest

    gen = load_generator(tiny_causal_lm if backend == "torch" else onnx_lm, backend=backend)
    single = [gen.generate(p, c) for p, c in zip(PROMPTS, MIXED, strict=True)]
    deltas: list[list[str]] = [[] for _ in PROMPTS]
    batch = gen.generate_batch([BatchRequest(p, c, on_text=deltas[i].append)
                                for i, (p, c) in enumerate(zip(PROMPTS, MIXED, strict=True))])
    assert [(g.token_ids, g.text, g.finish_reason) for g in batch] == [(g.token_ids, g.text, g.finish_reason) for g in single]
    assert ["".join(d) for d in deltas] == [g.text for g in batch]  # streamed text adds up to the answer
    assert [len(t) for t in batch[1].top_logprobs] == [2] * len(batch[1].token_ids)
    for a, b in zip(batch, single, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_generate_batch_stops_a_cancelled_request_and_keeps_the_others(tiny_causal_lm: Path) -> None:
    from chatforge.runtime.decode import BatchRequest

    gen = load_generator(tiny_causal_lm, backend="torch")
    cfg = GenerationConfig(max_new_tokens=12)
    gen.eos_ids = set()  # every reply runs to its limit
    polls = [0]

    def cancel_after_three() -> bool:
        polls[0] += 1
        return polls[0] > 3

    batch = gen.generate_batch([BatchRequest(PROMPTS[0], cfg, cancelled=cancel_after_three), BatchRequest(PROMPTS[1], cfg)])
    assert len(batch[0].token_ids) == 3 and batch[0].finish_reason == "stop"
    assert batch[1].token_ids == gen.generate(PROMPTS[1], cfg).token_ids and len(batch[1].token_ids) == 12


def test_on_token_sees_every_generated_token_in_batch_and_alone(tiny_causal_lm: Path) -> None:
    from chatforge.runtime.decode import BatchRequest

    gen = load_generator(tiny_causal_lm, backend="torch")
    seen: list[list[tuple[int, float]]] = [[], []]
    reqs = [BatchRequest(p, GenerationConfig(max_new_tokens=7), on_token=lambda t, lp, i=i: seen[i].append((t, lp)))
            for i, p in enumerate(PROMPTS[:2])]
    out = gen.generate_batch(reqs)
    for got, g in zip(seen, out, strict=True):
        assert [t for t, _ in got] == g.token_ids and [lp for _, lp in got] == g.token_logprobs
    alone: list[tuple[int, float]] = []
    gen.generate_batch([BatchRequest(PROMPTS[0], GenerationConfig(max_new_tokens=7), on_token=lambda t, lp: alone.append((t, lp)))])
    assert [t for t, _ in alone] == out[0].token_ids
