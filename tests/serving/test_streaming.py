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


def test_a_stream_the_client_leaves_is_recorded_with_what_was_sent(live_server):
    """Issue 22: the client hangs up after its first content chunk; the conversation is stored
    under the completion id the client holds, with the text it was sent, and can be rated."""
    import time

    from chatforge.serving.store import Conversation

    service = live_server.app.state.service
    backend = service.backends["lm"]
    backend.generator.eos_ids = set()  # the reply would run to max_tokens
    headers = {"Authorization": f"Bearer {live_server.key}"}
    received, completion_id = "", None
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", timeout=60, headers=headers,
                      json={"model": "chatforge", "messages": [{"role": "user", "content": "where is my order?"}],
                            "max_tokens": 16, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                completion_id = chunk["id"]
                last = chunk["choices"][0]["delta"].get("content") or ""
                received += last
                if received:
                    break  # the first content chunk: hang up
    assert completion_id and received
    deadline, conv = time.monotonic() + 30, None
    while time.monotonic() < deadline and conv is None:
        with service.sessions() as s:
            conv = s.get(Conversation, completion_id)
            stored = (conv.finish_reason, conv.messages[-1].content, conv.completion_tokens) if conv else None
        time.sleep(0.1)
    assert stored is not None, "the abandoned stream was never recorded"
    assert stored[0] == "abandoned"
    # what the server sent before it saw the hang-up: what the client read, give or take the chunks
    # in flight (sent but unread, or in the relay when the client left), and never the whole answer
    sent, read = stored[1], received
    assert sent.startswith(read[: len(read) - len(last)]) and (read.startswith(sent) or sent.startswith(read))
    assert stored[2] < 16  # decoding stopped: not the 16 tokens the full answer has
    r = httpx.post(f"{live_server.url}/v1/feedback", headers=headers, json={"completion_id": completion_id, "rating": -1})
    assert r.status_code == 200, r.text
