"""Issue 22, serving rows 1-2: a request is rendered and measured before it joins a batch, so no
request costs memory beyond the model's context, and one bad request never fails another."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chatforge.params import ServeParams
from chatforge.serving.app import create_app
from chatforge.serving.backends import open_backend
from chatforge.serving.config import ServeConfig
from tinymodels import build_tiny_causal_lm

# a Gemma/Qwen-style rule: one system message, and only first
STRICT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('System role only supported at the start of the conversation') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GOOD = [[{"role": "user", "content": text}] for text in
        ("hello", "where is my order?", "查询北京天气", "退货要多久？", "I would like a refund.")]
BAD = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
       {"role": "system", "content": "Be brief."}, {"role": "user", "content": "and now?"}]


@pytest.fixture(scope="module")
def strict_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("strict") / "lm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = STRICT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def client_for(folder: Path, serve_params: dict[str, Any], keys_file: tuple[Path, str], **limits: int) -> TestClient:
    params = serve_params | {"limits": serve_params["limits"] | {"max_chars": 8000} | limits,
                             "batch": {"max_batch_size": 8, "max_wait_ms": 400}}
    params["variants"] = [{"name": "lm", "model": str(folder), "backend": "torch"}]
    config = ServeConfig(params=ServeParams.model_validate(params), api_keys_file=keys_file[0])
    client = TestClient(create_app(config, backends={"lm": open_backend(folder, backend="torch", max_batch_size=8,
                                                                         max_wait_ms=400)}))
    client.headers["Authorization"] = f"Bearer {keys_file[1]}"
    return client


def ask(client: TestClient, messages: list[dict[str, str]], **extra: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": "lm", "messages": messages, **extra})


def streamed(client: TestClient, messages: list[dict[str, str]]) -> tuple[int, str]:
    with client.stream("POST", "/v1/chat/completions", json={"model": "lm", "messages": messages, "stream": True}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.json()["error"]["param"]
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    return 200, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_a_message_longer_than_the_context_is_a_400_naming_the_sizes(tiny_models, serve_params, keys_file):
    """7,999 characters, inside serve.limits.max_chars: today's 17 s and 8.7 GB become a 400 at once."""
    client = client_for(tiny_models["lm"], serve_params, keys_file)
    long = "where is my order " * 444 + "x" * 7  # 7,999 characters
    assert len(long) == 7999
    r = ask(client, [{"role": "user", "content": long}])
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("messages", "context_length_exceeded")
    prompt = client.app.state.service.backends["lm"].prompt_tokens([{"role": "user", "content": long}])
    assert prompt > 1024
    assert err["message"] == (f"messages: the prompt is {prompt} tokens after the chat template and this model's "
                              "context is 1024 tokens, which leaves no room for an answer; send a shorter history or message")
    assert streamed(client, [{"role": "user", "content": long}]) == (400, "messages")


def test_asked_max_tokens_beyond_the_room_is_a_400_and_the_default_is_lowered(tiny_models, serve_params, keys_file):
    client = client_for(tiny_models["lm"], serve_params, keys_file, max_tokens=16, default_max_tokens=6)
    backend = client.app.state.service.backends["lm"]
    # a prompt that leaves exactly 3 tokens of room in the 1024-token context
    words = 1
    while backend.prompt_tokens([{"role": "user", "content": "order " * words}]) < 1021:
        words += 1
    messages = [{"role": "user", "content": "order " * words}]
    prompt = backend.prompt_tokens(messages)
    room = 1024 - prompt
    assert 1 <= room <= 3
    r = ask(client, messages, max_tokens=room + 1)
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("max_tokens", "context_length_exceeded")
    assert f"the prompt's {prompt} tokens plus {room + 1} answer tokens exceed this model's context of 1024 tokens; ask for at most {room}" in err["message"]
    r = ask(client, messages, max_completion_tokens=room + 1)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "max_completion_tokens")
    # not asked: the default (6) is lowered to the room, and the answer ends on length there at most
    r = ask(client, messages)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= room
    assert r.json()["usage"]["prompt_tokens"] == prompt


def test_a_template_refusal_is_a_400_naming_messages_plain_and_streamed(strict_lm, serve_params, keys_file):
    client = client_for(strict_lm, serve_params, keys_file)
    r = ask(client, BAD)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "messages"
    assert err["message"].startswith("messages: this model's chat template refuses them (System role only supported "
                                     "at the start of the conversation)")
    assert streamed(client, BAD) == (400, "messages")


@pytest.mark.parametrize("stream", [False, True])
def test_one_bad_request_among_five_good_ones(strict_lm, serve_params, keys_file, stream):
    """Sent together (one batching window): the bad one gets 400, the five the answers they get alone."""
    alone = [ask(client_for(strict_lm, serve_params, keys_file), m).json()["choices"][0]["message"]["content"]
             for m in GOOD]
    client = client_for(strict_lm, serve_params, keys_file)  # a fresh app: nothing cached
    batches: list[int] = []
    client.app.state.service.backends["lm"].scheduler.on_batch = batches.append
    start = threading.Barrier(6)
    out: dict[int, Any] = {}

    def send(i: int, messages: list[dict[str, str]]) -> None:
        start.wait()
        if stream:
            out[i] = streamed(client, messages)
        else:
            r = ask(client, messages)
            out[i] = (r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200
                      else r.json()["error"]["param"])

    threads = [threading.Thread(target=send, args=(i, m)) for i, m in enumerate([*GOOD, BAD])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert out[5] == (400, "messages")
    assert [out[i] for i in range(5)] == [(200, text) for text in alone]
    assert max(batches) > 1 and sum(batches) == 5  # decoded together; the bad one never joined a batch
