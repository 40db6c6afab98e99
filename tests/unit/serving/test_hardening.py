"""Issue 12: the service as an attacker and a strict OpenAI client see it (in-process app)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from chatforge.serving.store import Conversation, Feedback

HELLO = [{"role": "user", "content": "hello"}]
LIMITS = {"max_messages": 4, "max_chars": 200, "max_tokens": 16, "default_max_tokens": 6,
          "max_body_bytes": 4096, "max_header_bytes": 2048}


def call_asgi(app: Any, method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, int]:
    """Drive the app with raw ASGI messages: (status, JSON body, how many times it read the body)."""
    reads = 0
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), reads


@pytest.fixture
def params(serve_params: dict[str, Any]) -> dict[str, Any]:
    return serve_params | {"limits": LIMITS}


def error(r: Any) -> dict[str, Any]:
    return r.json()["error"]


# ------------------------------------------------------------------------- limits before work
def test_an_unauthenticated_body_is_never_read(make_client, params):
    app = make_client(params).app
    chunks = [b"x" * 1_000_000 for _ in range(200)]  # 200 MB offered
    status, body, reads = call_asgi(app, "POST", "/v1/chat/completions",
                                    {"content-type": "application/json", "content-length": "200000000"}, chunks)
    assert (status, body["error"]["code"], reads) == (401, "missing_api_key", 0)


def test_oversized_bodies_get_413_before_or_while_reading(make_client, params, keys_file):
    app = make_client(params).app
    auth = {"authorization": f"Bearer {keys_file[1]}", "content-type": "application/json"}
    status, body, reads = call_asgi(app, "POST", "/v1/chat/completions", auth | {"content-length": "5000"},
                                    [b"x" * 5000])
    assert (status, reads) == (413, 0)
    assert body["error"] == {
        "message": "request body too large: more than 4096 bytes (serve.limits.max_body_bytes); "
        "send a shorter conversation",
        "type": "invalid_request_error", "code": "request_too_large", "param": None,
    }
    # chunked (no Content-Length): refused at the chunk that crosses the limit, the rest never read
    status, body, reads = call_asgi(app, "POST", "/v1/chat/completions", auth, [b"x" * 1000] * 100)
    assert (status, body["error"]["code"], reads) == (413, "request_too_large", 5)


def test_oversized_headers_get_431(make_client, params):
    client = make_client(params)
    r = client.get("/v1/models", headers={"X-Padding": "a" * 4000})
    assert r.status_code == 431
    assert error(r)["code"] == "request_header_fields_too_large"
    assert error(r)["message"].endswith("(serve.limits.max_header_bytes); send fewer or shorter headers")
    assert client.get("/v1/models", headers={"X-Padding": "a" * 500}).status_code == 200


# --------------------------------------------------------------------------- feedback integrity
def test_feedback_only_from_the_key_that_created_the_completion(make_client, params, keys_file):
    from chatforge.serving.auth import add_key

    _, other = add_key(keys_file[0], name="other")
    client = make_client(params)
    cid = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()["id"]
    r = client.post("/v1/feedback", json={"completion_id": cid, "rating": -1, "correction": "You idiot."},
                    headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403
    assert error(r) | {"message": ""} == {"message": "", "type": "permission_error",
                                           "code": "feedback_not_allowed", "param": "completion_id"}
    with client.app.state.service.sessions() as s:
        assert s.query(Feedback).count() == 0
    # the owner: ratings are kept as history, one is current; a profane correction is held
    for rating in (1, -1, 1):
        assert client.post("/v1/feedback", json={"completion_id": cid, "rating": rating}).status_code == 200
    r = client.post("/v1/feedback", json={"completion_id": cid, "rating": -1, "correction": "废@#￥%物"})
    assert r.json()["correction_review"] == "held"
    r = client.post("/v1/feedback", json={"completion_id": cid, "rating": -1, "correction": "It ships today."})
    assert r.json()["correction_review"] == "pending"
    with client.app.state.service.sessions() as s:
        rows = s.query(Feedback).order_by(Feedback.id).all()
        assert [(f.rating, f.current) for f in rows] == [(1, False), (-1, False), (1, False), (-1, False), (-1, True)]
        assert [f.review for f in rows] == [None, None, None, "held", "pending"]


# --------------------------------------------------------------------- invalid unicode, crashes
@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"model": "chatforge", "messages": [{"role": "user", "content": "hi \\ud83d"}]}', "messages.0.content"),
        ('{"model": "chatforge", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
         "messages.0.content.0.text"),
        ('{"model": "chatforge", "messages": [{"role": "user", "content": "hi"}], "user": "\\ud83d"}', "user"),
        ('{"model": "chatforge\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field(make_client, params, raw, param):
    client = make_client(params)
    r = client.post("/v1/chat/completions", content=raw.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert (error(r)["code"], error(r)["param"]) == ("invalid_unicode", param)
    assert error(r)["message"].startswith(f"{param}: invalid Unicode: a lone surrogate escape")


def test_invalid_utf8_and_malformed_json_name_no_field(make_client, params):
    client = make_client(params)
    r = client.post("/v1/chat/completions", content=b'{"model": "chatforge", "messages": [}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert error(r) == {"message": "the request body is not valid JSON: Expecting value at line 1 column 37",
                        "type": "invalid_request_error", "code": "invalid_json", "param": None}
    r = client.post("/v1/chat/completions", content=b'{"model": "\xff"}', headers={"Content-Type": "application/json"})
    assert (r.status_code, error(r)["code"], error(r)["param"]) == (400, "invalid_json", None)
    assert error(r)["message"] == "the request body is not valid UTF-8 (byte 11); send JSON encoded as UTF-8"


def test_a_crash_is_one_500_counted_and_logged_once(make_client, params, caplog):
    client = make_client(params)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("backend exploded")

    client.app.state.service.backends["lm"].answer = broken
    with caplog.at_level(logging.ERROR):
        r = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO})
    del client.app.state.service.backends["lm"].answer
    assert r.status_code == 500
    assert error(r)["type"] == "server_error" and error(r)["message"].startswith("internal error (ref ")
    assert "backend exploded" not in r.text
    assert len([rec for rec in caplog.records if "unhandled error" in rec.getMessage()]) == 1
    metrics = client.get("/metrics").text
    assert 'chatforge_requests_total{route="/v1/chat/completions",status="500"} 1.0' in metrics
    assert 'chatforge_request_latency_seconds_count{route="/v1/chat/completions"} 1.0' in metrics


def test_refused_requests_are_counted_in_metrics(make_client, params):
    client = make_client(params)
    client.get("/v1/models", headers={"Authorization": ""})
    client.get("/v1/models", headers={"X-Padding": "a" * 4000})
    metrics = client.get("/metrics").text
    assert 'chatforge_requests_total{route="/v1/models",status="401"} 1.0' in metrics
    assert 'chatforge_requests_total{route="/v1/models",status="431"} 1.0' in metrics


def test_query_strings_are_redacted_from_the_access_log(make_client, params):
    from chatforge.serving.app import RedactQuery

    make_client(params)
    access = logging.getLogger("uvicorn.access")
    assert any(isinstance(f, RedactQuery) for f in access.filters)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/v1/models?api_key=cf-secret", "1.1", 401), None)
    assert access.filters[-1].filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /v1/models?[redacted] HTTP/1.1" 401'


def test_every_response_carries_security_headers(make_client, params):
    client = make_client(params)
    for r in (client.get("/"), client.get("/v1/models"), client.get("/v1/models", headers={"Authorization": ""})):
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "script-src 'self'" in r.headers["content-security-policy"]


# ---------------------------------------------------------------------------- OpenAI honesty
def test_developer_role_is_the_system_role(make_client, params):
    client = make_client(params)
    body = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": [
        {"role": "developer", "content": "Answer briefly."}, *HELLO]}).json()
    with client.app.state.service.sessions() as s:
        assert [m.role for m in s.get(Conversation, body["id"]).messages] == ["system", "user", "assistant"]


def test_logprobs_plain_match_the_text_and_the_greedy_choice(make_client, params):
    client = make_client(params)
    body = client.post("/v1/chat/completions", json={
        "model": "chatforge", "messages": HELLO, "logprobs": True, "top_logprobs": 3, "max_tokens": 8,
        "temperature": 0}).json()
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for t in content:
        assert t["logprob"] <= 0 and t["bytes"] == list(t["token"].encode())
        assert len(t["top_logprobs"]) == 3
        # greedy: the chosen token is the most likely one
        assert t["top_logprobs"][0]["logprob"] == pytest.approx(t["logprob"])
        assert [a["logprob"] for a in t["top_logprobs"]] == sorted((a["logprob"] for a in t["top_logprobs"]), reverse=True)
    plain = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO, "max_tokens": 8}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_logprobs_streamed_equal_the_plain_ones(make_client, params):
    client = make_client(params)
    req = {"model": "chatforge", "messages": HELLO, "logprobs": True, "top_logprobs": 2, "max_tokens": 8}
    plain = client.post("/v1/chat/completions", json=req).json()
    with client.stream("POST", "/v1/chat/completions", json=req | {"stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    streamed = [t for c in chunks for t in ((c["choices"][0].get("logprobs") or {}).get("content") or [])]
    assert streamed == plain["choices"][0]["logprobs"]["content"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]


def test_logprobs_of_a_replaced_answer_are_null_content(make_client, params):
    client = make_client(params | {"confidence_threshold": 0.99})
    body = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO, "logprobs": True}).json()
    assert body["chatforge"]["fallback"] is True
    assert body["choices"][0]["logprobs"] == {"content": None, "refusal": None}


@pytest.mark.parametrize(
    ("change", "param", "starts"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format",
         "response_format type 'json_object' is not supported by this model"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format",
         "response_format type 'json_schema' is not supported by this model"),
        ({"tools": [{"type": "function", "function": {"name": "lookup"}}]}, "tools", "tools are not supported"),
        ({"tool_choice": "required"}, "tool_choice", "tool_choice 'required' is not supported"),
        ({"tool_choice": {"type": "function", "function": {"name": "lookup"}}}, "tool_choice",
         "tool_choice 'a named function' is not supported"),
        ({"messages": [*HELLO, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}]},
         "messages.1.tool_calls", "messages.1.tool_calls: tool calls are not supported by this model"),
        ({"messages": [*HELLO, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]},
         "messages.1.role", "messages.1.role = 'tool': tool results are not supported by this model"),
        ({"max_completion_tokens": 17}, "max_completion_tokens",
         "max_completion_tokens = 17 exceeds this server's limit of 16"),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs needs logprobs: true"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "invalid request: top_logprobs:"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "invalid request: messages.0.content"),
    ],
)
def test_what_the_model_cannot_do_is_refused_naming_the_public_field(make_client, params, change, param, starts):
    client = make_client(params)
    r = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO} | change)
    assert r.status_code == 400, r.text
    assert error(r)["param"] == param
    assert error(r)["message"].startswith(starts)


def test_text_response_format_and_no_tool_choice_are_fine(make_client, params):
    client = make_client(params)
    r = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO,
                                                  "response_format": {"type": "text"}, "tool_choice": "none"})
    assert r.status_code == 200


def test_logprobs_from_a_classifier_variant_are_refused(make_client, params):
    client = make_client(params | {"variants": [{"name": "clf", "model": "unused", "weight": 1}]})
    r = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO, "logprobs": True})
    assert (r.status_code, error(r)["param"], error(r)["code"]) == (400, "logprobs", "unsupported_value")


def test_get_one_model(make_client, params):
    client = make_client(params)
    assert client.get("/v1/models/lm").json() == {"id": "lm", "object": "model", "created": 0, "owned_by": "chatforge"}
    assert client.get("/v1/models/chatforge:friendly").json()["id"] == "chatforge:friendly"
    r = client.get("/v1/models/gpt-4")
    assert (r.status_code, error(r)["code"], error(r)["param"]) == (404, "model_not_found", "model")


# ----------------------------------------------------------------------------- privacy at rest
def test_stored_messages_hold_the_pii_mask_not_the_number(make_client, params):
    client = make_client(params)
    body = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": [
        {"role": "user", "content": "我的手机号是13812345678，邮箱 li@example.com"}]}).json()
    with client.app.state.service.sessions() as s:
        stored = s.get(Conversation, body["id"]).messages[0].content
    assert stored == "我的手机号是<PHONE>，邮箱 <EMAIL>"
    kept = make_client(params | {"privacy": {"mask_pii": False}})
    body = kept.post("/v1/chat/completions", json={"model": "chatforge", "messages": [
        {"role": "user", "content": "call 13812345678"}]}).json()
    with kept.app.state.service.sessions() as s:
        assert s.get(Conversation, body["id"]).messages[0].content == "call 13812345678"


def test_old_conversations_are_deleted_at_start_up(make_client, params):
    import datetime as dt

    client = make_client(params)
    ids = [client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()["id"]
           for _ in range(2)]
    with client.app.state.service.sessions.begin() as s:
        s.get(Conversation, ids[0]).created_at -= dt.timedelta(days=31)
    restarted = make_client(params)
    with restarted.app.state.service.sessions() as s:
        assert [c.id for c in s.query(Conversation).all()] == [ids[1]]
