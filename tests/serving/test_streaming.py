"""Real streaming: the first content chunk reaches the client while the answer is still decoding."""

from __future__ import annotations

import json
import threading

import httpx


def test_first_chunk_arrives_before_the_last_token_is_decoded(live_server):
    backend = live_server.app.state.service.backends["lm"]
    backend.generator.eos_ids = set()  # the reply runs to max_tokens
    first_chunk = threading.Event()
    seen_before_last: list[bool] = []
    submit = backend.scheduler.submit

    def submit_watching(messages, config, *, on_token=None, **kw):
        count = [0]

        def watch(token, logprob):
            count[0] += 1
            if count[0] == config.max_new_tokens - 1:  # one token left to decode: has the client got text?
                seen_before_last.append(first_chunk.wait(timeout=20))
            if on_token is not None:
                on_token(token, logprob)

        return submit(messages, config, on_token=watch, **kw)

    backend.scheduler.submit = submit_watching
    try:
        pieces = []
        with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {live_server.key}"},
                          json={"model": "chatforge", "messages": [{"role": "user", "content": "hello"}],
                                "max_tokens": 16, "stream": True}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    pieces.append(delta)
                    first_chunk.set()
    finally:
        backend.scheduler.submit = submit
    # decoding was held at token 15 of 16 until the client had a content chunk: it had one
    assert seen_before_last == [True]
    assert pieces and "".join(pieces)


def test_a_client_that_goes_away_stops_the_decoding(live_server):
    backend = live_server.app.state.service.backends["lm"]
    backend.generator.eos_ids = set()  # the reply would run to max_tokens
    client_gone = threading.Event()
    decoded: list[int] = []
    submit = backend.scheduler.submit

    def submit_watching(messages, config, *, on_token=None, **kw):
        def watch(token, logprob):
            decoded.append(token)
            if len(decoded) == 8:
                client_gone.wait(timeout=20)  # hold decoding until the client has hung up
            if on_token is not None:
                on_token(token, logprob)

        future = submit(messages, config, on_token=watch, **kw)
        futures.append(future)
        return future

    futures: list = []
    backend.scheduler.submit = submit_watching
    try:
        with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {live_server.key}"},
                          json={"model": "chatforge", "messages": [{"role": "user", "content": "hello"}],
                                "max_tokens": 16, "stream": True}) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"role"' not in line:
                    break  # the first content chunk: hang up
        client_gone.set()
        generation = futures[0].result(timeout=30)
    finally:
        backend.scheduler.submit = submit
    assert generation.finish_reason == "stop"
    assert len(generation.token_ids) < 16, generation.token_ids  # stopped well before max_tokens
