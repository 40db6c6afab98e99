"""UpstreamBackend against a scripted upstream (httpx.MockTransport): the request it sends, the
shapes other servers answer with (vLLM-style byte tokens, logprobs past a stop string, no
logprobs, no usage) and every failure. The real upstream (a `chatforge serve` process) is in
tests/serving/test_upstream.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from chatforge.metrics import answer_confidence
from chatforge.params import ServeUpstream
from chatforge.runtime.decode import GenerationConfig
from chatforge.serving.errors import APIError
from chatforge.serving.upstream import UpstreamBackend, UpstreamError, approximate_tokens

BASE = "http://upstream.test:8001/v1"
KEY = "sk-upstream-secret-0123456789"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"}]


def entry(token: str, logprob: float, *, raw: list[int] | None = None, top: list[tuple[str, float]] = ()) -> dict:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode("utf-8")) if raw is None else raw,
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in top],
    }


def completion(text: str | None, entries: list[dict] | None, *, finish: str = "stop",
               usage: dict | None = None) -> dict:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                     "logprobs": None if entries is None else {"content": entries}}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def make(handler, *, key_env: str | None = None,
         confidence_tokens: int | None = None, **params: Any) -> UpstreamBackend:
    upstream = ServeUpstream(base_url=params.pop("base_url", BASE), model=params.pop("model", "qwen-chat"),
                             api_key_env=key_env, **params)
    return UpstreamBackend(upstream, confidence_tokens=confidence_tokens, variant="up",
                           transport=httpx.MockTransport(handler))


def reply(body: dict, status: int = 200):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return handler


def sse(*events: dict | str) -> bytes:
    out = []
    for e in events:
        out.append(f"data: {e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)}\n\n")
    return "".join(out).encode("utf-8")


def chunk(content: str | None = None, entries: list[dict] | None = None, *, finish: str | None = None,
          usage: dict | None = None, role: bool = False) -> dict:
    if usage is not None:
        return {"object": "chat.completion.chunk", "choices": [], "usage": usage}
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish,
         "logprobs": None if entries is None else {"content": entries}}]}


# ------------------------------------------------------------------------------------ request
def test_the_request_carries_sampling_logprobs_and_the_key(monkeypatch):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion("Shipped.", [entry("Sh", -0.1), entry("ipped.", -0.2)],
                                                    usage={"prompt_tokens": 9, "completion_tokens": 2}))

    monkeypatch.setenv("UPSTREAM_KEY", KEY)
    backend = make(handler, key_env="UPSTREAM_KEY", base_url=BASE + "/")
    config = GenerationConfig(max_new_tokens=12, temperature=0.7, top_p=0.9, stop_strings=("\n\n", "END"),
                              seed=7, top_logprobs=3)
    backend.answer(MESSAGES, config, lang="en")
    request = seen[0]
    assert request.method == "POST" and str(request.url) == f"{BASE}/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {
        "model": "qwen-chat", "messages": MESSAGES, "max_tokens": 12, "temperature": 0.7, "top_p": 0.9,
        "logprobs": True, "top_logprobs": 3, "stop": ["\n\n", "END"], "seed": 7,
    }
    # greedy defaults: no stop, no seed sent; no key configured: no Authorization header
    keyless = make(handler)
    keyless.answer(MESSAGES, GenerationConfig(max_new_tokens=4), lang="en")
    body = json.loads(seen[1].content)
    assert "stop" not in body and "seed" not in body and body["temperature"] == 0.0
    assert "authorization" not in seen[1].headers


def test_a_key_variable_that_is_unset_fails_at_construction_naming_it(monkeypatch):
    monkeypatch.delenv("CHATFORGE_UPSTREAM_KEY_UNSET", raising=False)
    with pytest.raises(ValueError, match="CHATFORGE_UPSTREAM_KEY_UNSET") as err:
        make(reply({}), key_env="CHATFORGE_UPSTREAM_KEY_UNSET")
    assert "variant 'up'" in str(err.value) and "not set" in str(err.value)
    monkeypatch.setenv("CHATFORGE_UPSTREAM_KEY_UNSET", "  ")
    with pytest.raises(ValueError, match="CHATFORGE_UPSTREAM_KEY_UNSET"):
        make(reply({}), key_env="CHATFORGE_UPSTREAM_KEY_UNSET")


def test_the_fingerprint_names_the_upstream_and_its_model():
    a = make(reply({}))
    assert a.fingerprint.startswith("upstream:") and len(a.fingerprint) == len("upstream:") + 16
    assert make(reply({}), base_url=BASE + "/").fingerprint == a.fingerprint
    assert make(reply({}), model="other").fingerprint != a.fingerprint
    assert make(reply({}), base_url="http://other.test/v1").fingerprint != a.fingerprint
    assert a.family == "causal_lm"
    assert KEY not in repr(a)


# ----------------------------------------------------------------------------------- answers
def test_an_answer_maps_text_tokens_usage_and_confidence_over_the_first_tokens():
    entries = [entry("Your", -0.1, top=[("Your", -0.1), ("The", -2.5)]), entry(" order", -0.5),
               entry(" shipped", -1.5), entry(".", -3.0)]
    backend = make(reply(completion("Your order shipped.", entries, finish="length",
                                    usage={"prompt_tokens": 21, "completion_tokens": 4})), confidence_tokens=2)
    answer = backend.answer(MESSAGES, GenerationConfig(max_new_tokens=4, top_logprobs=2), lang="en")
    assert answer.text == "Your order shipped."
    assert answer.finish_reason == "length"
    assert (answer.prompt_tokens, answer.completion_tokens) == (21, 4)
    assert answer.token_texts == ("Your", " order", " shipped", ".")
    assert answer.token_logprobs == (-0.1, -0.5, -1.5, -3.0)
    assert answer.top_logprobs[0] == (("Your", -0.1), ("The", -2.5)) and answer.top_logprobs[1] == ()
    assert answer.confidence == pytest.approx(answer_confidence([-0.1, -0.5]))
    assert make(reply(completion("Your order shipped.", entries)), confidence_tokens=None).answer(
        MESSAGES, GenerationConfig(), lang="en").confidence == pytest.approx(answer_confidence(
            [-0.1, -0.5, -1.5, -3.0]))
    assert answer.tokens()[0] == ("Your", -0.1, [("Your", -0.1), ("The", -2.5)])


def test_byte_tokens_of_a_split_character_and_tokens_past_a_stop_string_add_up_to_the_text():
    # vLLM-style: "你" (e4 bd a0) split over two byte tokens; the tokens that formed the stop string
    # "##" are reported although the text stops before it
    entries = [
        entry("bytes:\\xe4\\xbd", -0.2, raw=[0xE4, 0xBD]),
        entry("bytes:\\xa0", -0.1, raw=[0xA0]),
        entry("好", -0.3),
        entry("#", -0.4),
        entry("#", -0.5),
    ]
    backend = make(reply(completion("你好", entries, usage={"prompt_tokens": 5, "completion_tokens": 5})))
    answer = backend.answer(MESSAGES, GenerationConfig(stop_strings=("##",)), lang="zh")
    assert answer.text == "你好"
    assert answer.token_texts == ("", "你", "好", "", "")
    assert "".join(answer.token_texts) == answer.text
    assert len(answer.token_logprobs) == 5  # every generated token counts for the confidence
    # entries without `bytes` (some servers): the token strings are used
    plain = [{"token": "Hi", "logprob": -0.1}, {"token": " there", "logprob": -0.2, "top_logprobs": []}]
    answer = make(reply(completion("Hi there", plain))).answer(MESSAGES, GenerationConfig(), lang="en")
    assert answer.token_texts == ("Hi", " there")
    # texts that disagree with the answer: the whole text on the first token (chatforge's own rule)
    odd = make(reply(completion("Hello", [entry("Bye", -0.1), entry("!", -0.2)])))
    assert odd.answer(MESSAGES, GenerationConfig(), lang="en").token_texts == ("Hello", "")


def test_no_logprobs_gives_confidence_one_and_warns_once(caplog):
    backend = make(reply(completion("Shipped.", None, usage={"prompt_tokens": 3, "completion_tokens": 2})),
                   confidence_tokens=4)
    with caplog.at_level(logging.WARNING, logger="chatforge.serving.upstream"):
        first = backend.answer(MESSAGES, GenerationConfig(), lang="en")
        second = backend.answer(MESSAGES, GenerationConfig(), lang="en")
    assert first.confidence == second.confidence == 1.0
    assert first.token_texts == () and first.tokens() is None
    warnings = [r for r in caplog.records if "no logprobs" in r.getMessage()]
    assert len(warnings) == 1 and BASE in warnings[0].getMessage()
    # an empty answer is judged like the gateway's own models judge one: confidence 0
    empty = make(reply(completion("", None))).answer(MESSAGES, GenerationConfig(), lang="en")
    assert empty.confidence == 0.0 and empty.text == ""
    # logprobs with no entries for a non-empty text: nothing to judge it by either
    assert make(reply(completion("Shipped.", []))).answer(MESSAGES, GenerationConfig(), lang="en").confidence == 1.0
    # content null (OpenAI sends it for a refusal): text ""
    assert make(reply(completion(None, []))).answer(MESSAGES, GenerationConfig(), lang="en").text == ""


def test_without_usage_the_counts_are_approximated():
    answer = make(reply(completion("Your order shipped.", None))).answer(MESSAGES, GenerationConfig(), lang="en")
    assert answer.prompt_tokens == len(approximate_tokens("Be brief.")) + len(approximate_tokens("Where is my order?"))
    assert answer.completion_tokens == len(approximate_tokens("Your order shipped.")) == 4
    with_logprobs = make(reply(completion("ab", [entry("a", -0.1), entry("b", -0.1)])))
    assert with_logprobs.answer(MESSAGES, GenerationConfig(), lang="en").completion_tokens == 2


# ------------------------------------------------------------------------------------ errors
def test_an_upstream_error_status_is_a_502_naming_the_upstream_and_never_the_key(monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", KEY)
    echoing = {"error": {"message": f"engine overloaded (key {KEY})", "type": "server_error"}}
    backend = make(reply(echoing, status=503), key_env="UPSTREAM_KEY")
    with pytest.raises(UpstreamError) as err:
        backend.answer(MESSAGES, GenerationConfig(), lang="en")
    exc = err.value
    assert isinstance(exc, APIError) and exc.status == 502 and exc.upstream_status == 503
    assert exc.base_url == BASE and exc.code == "upstream_error"
    message = str(exc)
    assert BASE in message and "503" in message and "engine overloaded" in message
    assert KEY not in message and "[redacted]" in message
    assert exc.body() == {"error": {"message": message, "type": "api_error", "code": "upstream_error", "param": None}}
    # a 4xx from the upstream is also the upstream's failure, not the client's
    with pytest.raises(UpstreamError, match="HTTP 401") as err:
        make(reply({"error": {"message": "invalid API key"}}, status=401)).answer(MESSAGES, GenerationConfig(), lang="en")
    assert err.value.upstream_status == 401 and "invalid API key" in str(err.value)
    # a non-JSON error page
    with pytest.raises(UpstreamError, match="HTTP 500.*Internal"):
        make(lambda r: httpx.Response(500, text="Internal meltdown")).answer(MESSAGES, GenerationConfig(), lang="en")


@pytest.mark.parametrize(
    ("raised", "code", "words"),
    [
        (httpx.ReadTimeout("timed out"), "upstream_timeout", "did not answer within 2.5 s"),
        (httpx.ConnectTimeout("timed out"), "upstream_timeout", "did not answer within 2.5 s"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "upstream_unreachable", "is unreachable"),
        (httpx.RemoteProtocolError("Server disconnected"), "upstream_unreachable", "is unreachable"),
    ],
)
def test_timeouts_and_unreachable_upstreams_raise_upstream_error(raised, code, words):
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    backend = make(handler, timeout_s=2.5)
    for call in (lambda: backend.answer(MESSAGES, GenerationConfig(), lang="en"),
                 lambda: backend.stream(MESSAGES, GenerationConfig(), lang="en")):
        with pytest.raises(UpstreamError) as err:
            call()
        assert err.value.code == code and err.value.upstream_status is None
        assert words in str(err.value) and BASE in str(err.value) and "variant 'up'" in str(err.value)


@pytest.mark.parametrize("body", [{"choices": []}, {"object": "list"}, [1, 2],
                                  completion("x", [{"token": "x", "logprob": "high"}])])
def test_a_malformed_answer_raises_upstream_error(body):
    with pytest.raises(UpstreamError, match="malformed chat completion"):
        make(reply(body)).answer(MESSAGES, GenerationConfig(), lang="en")
    with pytest.raises(UpstreamError, match="malformed"):
        make(lambda r: httpx.Response(200, text="<html>")).answer(MESSAGES, GenerationConfig(), lang="en")


# ----------------------------------------------------------------------------------- streams
def stream_handler(body: bytes, status: int = 200, seen: list | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    return handler


def test_a_stream_yields_deltas_and_entries_then_the_whole_answer():
    body = sse(
        chunk("", role=True),
        chunk("Your", [entry("Your", -0.1)]),
        chunk("", [entry("bytes:\\xe5", -0.2, raw=[0xE5])]),  # "好" (e5 a5 bd) split over two tokens
        chunk("好", [entry("bytes:\\xa5\\xbd", -0.3, raw=[0xA5, 0xBD])]),
        chunk(None, None, finish="length"),
        chunk(usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}),
        "[DONE]",
    )
    seen: list[httpx.Request] = []
    backend = make(stream_handler(body, seen=seen), confidence_tokens=2)
    stream = backend.stream(MESSAGES, GenerationConfig(max_new_tokens=3, top_logprobs=1), lang="en")
    assert json.loads(seen[0].content)["stream"] is True
    assert json.loads(seen[0].content)["stream_options"] == {"include_usage": True}
    with pytest.raises(RuntimeError, match="not ended"):
        _ = stream.answer
    events = list(stream)
    assert [d for d, _ in events] == ["Your", "", "好"]
    assert [e[0][0] for _, e in events] == ["Your", "", "好"]
    assert [len(e) for _, e in events] == [1, 1, 1]
    answer = stream.answer
    assert answer.text == "Your好" and answer.finish_reason == "length"
    assert (answer.prompt_tokens, answer.completion_tokens) == (12, 3)
    assert answer.token_texts == ("Your", "", "好")
    assert answer.token_logprobs == (-0.1, -0.2, -0.3)
    assert answer.confidence == pytest.approx(answer_confidence([-0.1, -0.2]))


def test_a_stream_without_logprobs_or_usage_still_ends_with_an_answer(caplog):
    body = sse(chunk("", role=True), chunk("Hi"), chunk(" there"), chunk(None, finish="stop"))  # no [DONE]
    with caplog.at_level(logging.WARNING, logger="chatforge.serving.upstream"):
        stream = make(stream_handler(body)).stream(MESSAGES, GenerationConfig(), lang="en")
        assert list(stream) == [("Hi", []), (" there", [])]
    assert stream.answer.text == "Hi there" and stream.answer.confidence == 1.0
    assert stream.answer.completion_tokens == len(approximate_tokens("Hi there"))
    assert any("no logprobs" in r.getMessage() for r in caplog.records)


def test_stream_failures_raise_upstream_error():
    # an error status is raised by stream() itself, before anything was streamed
    failing = make(stream_handler(b'{"error": {"message": "model not loaded"}}', status=500))
    with pytest.raises(UpstreamError, match="HTTP 500.*model not loaded"):
        failing.stream(MESSAGES, GenerationConfig(), lang="en")
    # an error event mid-stream (vLLM sends one when the engine fails)
    body = sse(chunk("Hi", [entry("Hi", -0.1)]), {"error": {"message": "engine died", "code": 500}})
    stream = make(stream_handler(body)).stream(MESSAGES, GenerationConfig(), lang="en")
    assert next(stream) == ("Hi", [("Hi", -0.1, [])])
    with pytest.raises(UpstreamError, match="mid-stream: engine died"):
        next(stream)
    # the connection closed before a finish_reason or [DONE]
    cut = make(stream_handler(sse(chunk("Hi", [entry("Hi", -0.1)]))))
    with pytest.raises(UpstreamError, match="closed the stream before the answer finished"):
        list(cut.stream(MESSAGES, GenerationConfig(), lang="en"))
    # an event that is not JSON
    garbled = make(stream_handler(b"data: {not json\n\n"))
    with pytest.raises(UpstreamError, match="malformed stream event"):
        list(garbled.stream(MESSAGES, GenerationConfig(), lang="en"))


def test_a_stream_closed_early_releases_the_connection():
    body = sse(chunk("a", [entry("a", -0.1)]), chunk("b", [entry("b", -0.1)]), chunk(None, finish="stop"), "[DONE]")
    with make(stream_handler(body)).stream(MESSAGES, GenerationConfig(), lang="en") as stream:
        assert next(stream)[0] == "a"
    assert stream._response.is_closed
    with pytest.raises(StopIteration):
        next(stream)


# ------------------------------------------------------------------------ approximate tokens
@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Hello, world!", ["Hello", ",", " world", "!"]),
        ("查询北京天气", ["查", "询", "北", "京", "天", "气"]),
        ("今日北京晴，15-25℃", ["今", "日", "北", "京", "晴", "，", "15", "-", "25", "℃"]),
        ("internationalization", ["interna", "tionali", "zation"]),
        ("Your order shipped.", ["Your", " order", " shipped", "."]),
        (" a  b", [" a", "  ", "b"]),
        ("a\n\n  b", ["a", "\n\n  ", "b"]),
        ("", []),
    ],
)
def test_approximate_tokens_split_words_punctuation_and_cjk_characters(text, pieces):
    assert approximate_tokens(text) == pieces


@pytest.mark.parametrize("text", ["抱歉，我不太确定您的意思，能换个说法或联系人工客服吗？",
                                  "Sorry, I'm not sure what you mean. Could you rephrase?",
                                  "emoji 😀😀😀 and é accents, tabs\tand\x00nul", "  leading and trailing  "])
def test_token_ids_round_trip_and_every_prefix_is_a_prefix_of_the_text(text):
    backend = make(reply({}))
    ids = backend.token_ids(text)
    assert backend.detokenize(ids) == text
    assert all(0 < i < 2**62 for i in ids)
    for n in range(len(ids) + 1):
        assert text.startswith(backend.detokenize(ids[:n]))
    with pytest.raises(ValueError, match="not made by UpstreamBackend"):
        backend.detokenize([12345])
