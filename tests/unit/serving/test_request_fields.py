"""Issue 22, serving rows 3-8: every message screened, one Authorization header, store: false,
every OpenAI field honoured or refused by name, 405s with Allow, feedback errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from chatforge.serving.feedback_export import describe_held_back, export_feedback
from chatforge.serving.store import Conversation, record_feedback, set_review

WIDE = {"max_messages": 8, "max_chars": 2000, "max_tokens": 32, "default_max_tokens": 32}
HELLO = [{"role": "user", "content": "hello"}]


def ask(client: Any, messages: list[dict[str, str]] = HELLO, **extra: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": "chatforge", "messages": messages, **extra})


@pytest.mark.parametrize("role", ["system", "assistant", "developer"])
def test_a_term_in_any_message_the_client_sends_is_screened(make_client, serve_params, role):
    client = make_client(serve_params | {"limits": WIDE})
    history = [{"role": "user", "content": "hi"}, {"role": role, "content": "ＦＵ\u200bＣＫ you"},
               {"role": "user", "content": "where is my order?"}]
    body = ask(client, history).json()
    assert body["choices"][0]["message"]["content"] == "Sorry, I can't help with that."
    assert (body["chatforge"]["filter"], body["choices"][0]["finish_reason"]) == ("blocked", "content_filter")
    with client.app.state.service.sessions() as s:
        conv = s.get(Conversation, body["id"])
        assert (conv.input_filter, conv.filter_terms) == ("blocked", "fuck")


def test_mask_mode_stores_every_message_masked(make_client, serve_params):
    params = serve_params | {"limits": WIDE}
    params["filter"] = params["filter"] | {"mode": "mask"}
    client = make_client(params)
    body = ask(client, [{"role": "system", "content": "fuck the rules"}, {"role": "user", "content": "hello"}]).json()
    assert body["chatforge"]["filter"] == "masked"
    with client.app.state.service.sessions() as s:
        stored = [m.content for m in s.get(Conversation, body["id"]).messages]
    assert stored[0] == "**** the rules" and "fuck" not in " ".join(stored)


def test_an_approved_correction_never_exports_a_blocked_history(make_client, serve_params):
    client = make_client(serve_params | {"limits": WIDE})
    body = ask(client, [{"role": "system", "content": "fuck you"}, {"role": "user", "content": "hello"}]).json()
    sessions = client.app.state.service.sessions
    with sessions() as s:
        key_id = s.get(Conversation, body["id"]).api_key_id
    row = record_feedback(sessions, conversation_id=body["id"], rating=-1, correction="Hello! How can I help?",
                          api_key_id=key_id)
    set_review(sessions, row, "approved")
    exported = export_feedback(sessions)
    assert exported.rows == []
    assert exported.held_back == {"held": 0, "pending": 0, "rejected": 0, "blocked_input": 1}
    assert describe_held_back(exported.held_back) == (
        "held back: 1 conversation whose messages the sensitive-word filter blocked")


@pytest.mark.parametrize("order", ["bad_then_good", "good_then_other"])
def test_two_authorization_headers_are_a_401(make_client, serve_params, keys_file, order):
    from fastapi.testclient import TestClient

    client = make_client(serve_params)
    plain = TestClient(client.app)
    first = "Bearer nope" if order == "bad_then_good" else f"Bearer {keys_file[1]}"
    r = plain.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO},
                   headers=[("Authorization", first), ("Authorization", f"Bearer {keys_file[1]}")])
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "send one Authorization header: this request has several"
    with client.app.state.service.sessions() as s:
        assert s.query(Conversation).count() == 0


def test_store_false_keeps_nothing(make_client, serve_params):
    client = make_client(serve_params)
    body = ask(client, store=False).json()
    assert body["choices"][0]["message"]["content"]
    with client.app.state.service.sessions() as s:
        assert s.query(Conversation).count() == 0
    assert client.post("/v1/feedback", json={"completion_id": body["id"], "rating": 1}).status_code == 404
    stored = ask(client, store=True).json()
    with client.app.state.service.sessions() as s:
        assert s.get(Conversation, stored["id"]) is not None


@pytest.mark.parametrize(("extra", "param"), [
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"top_k": 5}, "top_k"),
    ({"x" * 300: 1}, "x" * 64),
])
def test_a_field_not_honoured_as_asked_is_a_400_naming_it(make_client, serve_params, extra, param):
    r = ask(make_client(serve_params), **extra)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "unsupported_value"
    assert err["message"].startswith(f"{param}: ") and len(err["message"]) < 300


def test_neutral_values_of_those_fields_are_honoured(make_client, serve_params):
    neutral = {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "modalities": ["text"],
               "function_call": "none", "metadata": {}, "service_tier": "auto", "parallel_tool_calls": False,
               "store": True}
    r = ask(make_client(serve_params), **neutral)
    assert r.status_code == 200, r.text


def test_405_names_the_allowed_methods_and_head_works(make_client, serve_params):
    client = make_client(serve_params)
    for path in ("/healthz", "/v1/models", "/"):
        assert client.head(path).status_code == 200, path
    r = client.post("/healthz")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_an_unknown_feedback_field_is_named(make_client, serve_params):
    client = make_client(serve_params)
    body = ask(client).json()
    r = client.post("/v1/feedback", json={"completion_id": body["id"], "rating": 1, "stars": 5})
    assert r.status_code == 400
    assert (r.json()["error"]["param"], r.json()["error"]["message"]) == ("stars", "invalid request: stars: unknown field")
