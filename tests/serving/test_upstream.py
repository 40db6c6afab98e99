"""UpstreamBackend against a real upstream: a `chatforge serve` process on loopback, with an API key
read from an environment variable. Its answers must be exactly what the upstream answers when asked
directly (greedy decoding), with consistent logprobs, usage and stop strings, plain and streamed.

The upstream serves a tiny model with an untied, random output layer: the tiny models of
conftest.py (tied embeddings) answer "\\n" over and over under greedy decoding, which would make
the equalities below trivial. This one answers varied byte-level tokens, including ones that only
begin a multi-byte character, and tokens whose bytes are not valid UTF-8 on their own.

The last test (`test_chatforge_serve_with_an_upstream_variant`) runs a gateway `chatforge serve`
whose variant is `upstream:` in front of the upstream process; the in-process gateway test before
it injects the backend through create_app(backends=...).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from chatforge.metrics import answer_confidence
from chatforge.params import ServeUpstream
from chatforge.runtime.decode import GenerationConfig
from chatforge.serving.upstream import UpstreamBackend, UpstreamError

REPO = Path(__file__).resolve().parents[2]
# the project's word lists by absolute path: each server runs in its own temporary folder
FILTER = {"lexicons": [str(REPO / "lexicons/sensitive/zh.txt"), str(REPO / "lexicons/sensitive/en.txt")]}
KEY_ENV = "CHATFORGE_TEST_UPSTREAM_KEY"
PROMPTS = ["Where is my order?", "查询北京天气"]
CONFIDENCE_TOKENS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(folder: Path, params: dict[str, Any], keys: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `chatforge serve` (this interpreter's chatforge) with this serve section; yield its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump({"serve": params}, allow_unicode=True), encoding="utf-8")
    port = free_port()
    log_path = folder / f"serve-{port}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "chatforge.cli", "serve", "--params", str(params_file), "--keys", str(keys),
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder,
        env=os.environ | {"CHATFORGE_THREADS": "1"} | (env or {}),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"chatforge serve exited: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"chatforge serve did not answer /healthz within 120 s: {log_path.read_text()[-3000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def build_varied_lm(folder: Path) -> Path:
    """The tiny serving LM with its output layer untied and random, so greedy answers vary."""
    import torch
    from transformers import AutoModelForCausalLM

    from tinymodels import build_tiny_causal_lm

    torch.set_num_threads(1)
    build_tiny_causal_lm(folder, seed=4)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.config.tie_word_embeddings = False
    torch.manual_seed(4)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(folder)
    return folder


@dataclass
class Upstream:
    url: str  # the server; its OpenAI base_url is url + "/v1"
    key: str
    keys_file: Path
    model_folder: Path

    def direct(self, **body: Any) -> dict[str, Any]:
        """Ask the upstream itself (no UpstreamBackend): the reference answer."""
        r = httpx.post(f"{self.url}/v1/chat/completions", json={"model": "lm"} | body,
                       headers={"Authorization": f"Bearer {self.key}"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()


def upstream_params(model_folder: Path, root: Path) -> dict[str, Any]:
    return {
        "confidence_threshold": 0.0,  # the upstream shows every answer; the gateway judges
        "variants": [{"name": "lm", "model": str(model_folder), "backend": "torch"}],
        "database_url": f"sqlite:///{root / 'upstream.db'}",
        "limits": {"max_tokens": 16, "default_max_tokens": 8},
        "rate_limit": {"requests_per_minute": 6000, "burst": 1000},  # the tests' gateway key makes many
        "filter": FILTER,
    }


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    from chatforge.serving.auth import add_key

    root = tmp_path_factory.mktemp("upstream")
    model_folder = build_varied_lm(root / "lm")
    keys = root / "keys.json"
    _, key = add_key(keys, name="gateway")
    with serve(root / "server", upstream_params(model_folder, root), keys) as url:
        yield Upstream(url=url, key=key, keys_file=keys, model_folder=model_folder)


@pytest.fixture
def backend(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[UpstreamBackend]:
    monkeypatch.setenv(KEY_ENV, upstream.key)
    params = ServeUpstream(base_url=f"{upstream.url}/v1", model="lm", api_key_env=KEY_ENV, timeout_s=60)
    b = UpstreamBackend(params, confidence_tokens=CONFIDENCE_TOKENS, variant="up")
    yield b
    b.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def entries_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body["choices"][0]["logprobs"]["content"]


def stop_inside(text: str) -> str:
    """A 2-character stop string of plain letters that first occurs after the answer's start."""
    for i in range(1, len(text) - 1):
        stop = text[i:i + 2]
        if stop.isascii() and stop.isalpha() and text.find(stop) == i:
            return stop
    pytest.fail(f"no usable stop string in {text!r}")


# --------------------------------------------------------------------------------- answers
@pytest.mark.parametrize("prompt", PROMPTS)
def test_an_answer_is_what_the_upstream_answers_directly(backend, upstream, prompt):
    answer = backend.answer(user(prompt), GenerationConfig(max_new_tokens=12, top_logprobs=2), lang="en")
    direct = upstream.direct(messages=user(prompt), max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    choice = direct["choices"][0]
    assert len(answer.text) >= 4 and answer.text.strip()  # a real answer, not a run of one token
    assert answer.text == choice["message"]["content"]
    assert answer.finish_reason == choice["finish_reason"]
    assert (answer.prompt_tokens, answer.completion_tokens) == (
        direct["usage"]["prompt_tokens"], direct["usage"]["completion_tokens"])
    # logprobs: one per generated token, texts adding up to the answer, alternatives as sent
    entries = entries_of(direct)
    assert len(answer.token_logprobs) == answer.completion_tokens == len(entries)
    assert list(answer.token_texts) == [e["token"] for e in entries]
    assert "".join(answer.token_texts) == answer.text
    assert list(answer.token_logprobs) == [e["logprob"] for e in entries]
    assert [list(top) for top in answer.top_logprobs] == [
        [(t["token"], t["logprob"]) for t in e["top_logprobs"]] for e in entries]
    assert all(len(top) == 2 for top in answer.top_logprobs)
    # the gateway's own confidence rule, over the first serve.confidence_tokens tokens
    assert answer.confidence == answer_confidence(answer.token_logprobs, first=CONFIDENCE_TOKENS)
    assert 0.0 < answer.confidence < 1.0
    assert backend.fingerprint.startswith("upstream:")


def test_the_answers_cover_split_characters(backend):
    """The varied model does emit tokens that only begin a character (text ""): the case the
    per-token bytes decoding exists for."""
    answers = [backend.answer(user(p), GenerationConfig(max_new_tokens=16), lang="en") for p in PROMPTS]
    assert any("" in a.token_texts for a in answers)
    assert all("".join(a.token_texts) == a.text for a in answers)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_stop_strings_are_honoured(backend, upstream, prompt):
    plain = backend.answer(user(prompt), GenerationConfig(max_new_tokens=16), lang="en")
    stop = stop_inside(plain.text)
    cut = backend.answer(user(prompt), GenerationConfig(max_new_tokens=16, stop_strings=(stop, "\x00never")),
                         lang="en")
    assert cut.text == plain.text[: plain.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert "".join(cut.token_texts) == cut.text
    direct = upstream.direct(messages=user(prompt), max_tokens=16, temperature=0, stop=[stop, "\x00never"],
                             logprobs=True)
    assert cut.text == direct["choices"][0]["message"]["content"]
    assert cut.completion_tokens == direct["usage"]["completion_tokens"]
    assert list(cut.token_logprobs) == [e["logprob"] for e in entries_of(direct)]


# --------------------------------------------------------------------------------- streams
@pytest.mark.parametrize("prompt", PROMPTS)
def test_stream_deltas_join_to_the_plain_answer(backend, prompt):
    config = GenerationConfig(max_new_tokens=12, top_logprobs=2)
    plain = backend.answer(user(prompt), config, lang="en")
    with backend.stream(user(prompt), config, lang="en") as stream:
        events = list(stream)
    assert "".join(delta for delta, _ in events) == plain.text
    assert [t for _, entries in events for t in entries] == plain.tokens()
    assert len(events) > 1  # streamed piece by piece, not in one lump
    assert stream.answer == plain  # text, finish, usage, tokens, logprobs, confidence


def test_a_streamed_answer_honours_stop_strings(backend):
    prompt = PROMPTS[0]
    plain = backend.answer(user(prompt), GenerationConfig(max_new_tokens=16), lang="en")
    config = GenerationConfig(max_new_tokens=16, stop_strings=(stop_inside(plain.text),))
    expected = backend.answer(user(prompt), config, lang="en")
    stream = backend.stream(user(prompt), config, lang="en")
    assert "".join(d for d, _ in stream) == expected.text
    assert stream.answer == expected and expected.finish_reason == "stop"


# ---------------------------------------------------------------------------------- errors
def test_a_wrong_key_or_a_dead_upstream_raise_upstream_error(upstream, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "cf-not-the-key")
    wrong = UpstreamBackend(ServeUpstream(base_url=f"{upstream.url}/v1", model="lm", api_key_env=KEY_ENV),
                            confidence_tokens=None, variant="up")
    with pytest.raises(UpstreamError) as err:
        wrong.answer(user("hi"), GenerationConfig(max_new_tokens=4), lang="en")
    assert err.value.upstream_status == 401 and err.value.status == 502
    assert upstream.url in str(err.value) and "401" in str(err.value)
    assert "cf-not-the-key" not in str(err.value) and upstream.key not in str(err.value)
    with pytest.raises(UpstreamError, match="HTTP 401"):
        wrong.stream(user("hi"), GenerationConfig(max_new_tokens=4), lang="en")
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    dead = UpstreamBackend(ServeUpstream(base_url=dead_url, model="lm", timeout_s=5), confidence_tokens=None)
    with pytest.raises(UpstreamError) as err:
        dead.answer(user("hi"), GenerationConfig(max_new_tokens=4), lang="en")
    assert err.value.code == "upstream_unreachable" and dead_url in str(err.value)
    # a request the upstream refuses (over its serve.limits.max_tokens) is the upstream's error too
    monkeypatch.setenv(KEY_ENV, upstream.key)
    right = UpstreamBackend(ServeUpstream(base_url=f"{upstream.url}/v1", model="lm", api_key_env=KEY_ENV),
                            confidence_tokens=None)
    with pytest.raises(UpstreamError, match="HTTP 400.*max_tokens = 64 exceeds"):
        right.answer(user("hi"), GenerationConfig(max_new_tokens=64), lang="en")


# ------------------------------------------------------------------------- the gateway in front
def gateway_params(root: Path, variant: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "confidence_threshold": 0.0,
        "confidence_tokens": CONFIDENCE_TOKENS,
        "variants": [variant],
        "database_url": f"sqlite:///{root / 'gateway.db'}",
        "limits": {"max_tokens": 16, "default_max_tokens": 8},
        "filter": FILTER,
    } | more


def upstream_variant(upstream: Upstream) -> dict[str, Any]:
    return {"name": "up", "upstream": {"base_url": f"{upstream.url}/v1", "model": "lm", "api_key_env": KEY_ENV}}


def test_the_gateway_in_front_of_the_upstream(upstream, backend, tmp_path, api_key):
    """chatforge's service with the backend injected (create_app(backends=...)): cache, threshold,
    streaming and the 502 shape over a real upstream. Runs without the app.py wiring."""
    from fastapi.testclient import TestClient

    from chatforge.params import ServeParams
    from chatforge.serving.app import create_app
    from chatforge.serving.config import ServeConfig

    def gateway(backends: dict[str, Any], **more: Any) -> TestClient:
        params = ServeParams.model_validate(gateway_params(tmp_path, upstream_variant(upstream), **more))
        client = TestClient(create_app(ServeConfig(params=params, api_keys_file=api_key[0]), backends=backends))
        client.headers["Authorization"] = f"Bearer {api_key[1]}"
        return client

    client = gateway({"up": backend})
    request = {"model": "chatforge", "messages": user(PROMPTS[1]), "max_tokens": 12, "temperature": 0,
               "logprobs": True, "top_logprobs": 2}
    first = client.post("/v1/chat/completions", json=request).json()
    direct = upstream.direct(**{k: v for k, v in request.items() if k != "model"})
    assert first["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert [(e["token"], e["logprob"]) for e in entries_of(first)] == [
        (e["token"], e["logprob"]) for e in entries_of(direct)]
    assert first["usage"] == direct["usage"]
    assert first["chatforge"]["variant"] == "up" and first["chatforge"]["cached"] is False
    lps = [e["logprob"] for e in entries_of(direct)]
    assert first["chatforge"]["confidence"] == pytest.approx(answer_confidence(lps, first=CONFIDENCE_TOKENS))
    again = client.post("/v1/chat/completions", json=request).json()
    assert again["chatforge"]["cached"] is True
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    streamed = client.post("/v1/chat/completions", json=request | {"stream": True}).text
    assert '"chatforge"' in streamed and streamed.rstrip().endswith("data: [DONE]")

    # the gateway's threshold judges the upstream's answers like its own
    strict = gateway({"up": backend}, confidence_threshold=0.99)
    held = strict.post("/v1/chat/completions", json=request).json()
    assert held["chatforge"]["fallback"] is True
    # the fallback message cut to max_tokens with the backend's approximate tokens (one per CJK character)
    fallback = strict.app.state.service.params.fallback["zh"]
    assert len(fallback) > 12
    assert held["choices"][0]["message"]["content"] == fallback[:12]
    assert held["usage"]["completion_tokens"] == 12 and held["choices"][0]["finish_reason"] == "length"
    longer = strict.post("/v1/chat/completions", json=request | {"max_tokens": 16}).json()
    assert longer["choices"][0]["message"]["content"] == fallback[:16]

    # a dead upstream: 502 in the OpenAI error shape, naming the upstream, not a 500
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    dead = UpstreamBackend(ServeUpstream(base_url=dead_url, model="lm", timeout_s=5), confidence_tokens=None)
    r = gateway({"up": dead}).post("/v1/chat/completions", json=request)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["type"] == "api_error" and error["code"] == "upstream_unreachable"
    assert dead_url in error["message"]


def test_chatforge_serve_with_an_upstream_variant(upstream, tmp_path, api_key):
    """Two real processes: a gateway `chatforge serve` whose only variant is `upstream:` (key from
    the environment) in front of the upstream `chatforge serve`."""
    import openai

    params = gateway_params(tmp_path, upstream_variant(upstream))
    with serve(tmp_path / "gateway", params, api_key[0], env={KEY_ENV: upstream.key}) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key[1], max_retries=0, timeout=60)
        for prompt in PROMPTS:
            kwargs = {"messages": user(prompt), "max_tokens": 12, "temperature": 0, "logprobs": True,
                      "top_logprobs": 2}
            through = client.chat.completions.create(model="chatforge", **kwargs)
            direct = upstream.direct(**kwargs)
            assert through.choices[0].message.content == direct["choices"][0]["message"]["content"]
            assert [(t.token, t.logprob) for t in through.choices[0].logprobs.content] == [
                (e["token"], e["logprob"]) for e in entries_of(direct)]
            assert through.usage.completion_tokens == direct["usage"]["completion_tokens"]
            assert through.model_extra["chatforge"]["variant"] == "up"
            stream = client.chat.completions.create(model="chatforge", stream=True,
                                                    stream_options={"include_usage": True}, **kwargs)
            chunks = list(stream)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
                through.choices[0].message.content
            assert chunks[-1].usage.completion_tokens == through.usage.completion_tokens
        # the gateway's models list names the upstream variant
        assert "up" in [m.id for m in client.models.list()]
