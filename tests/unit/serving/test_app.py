"""The HTTP service with real tiny models: OpenAI shapes, errors, limits, persona, fallback, store."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from chatforge.serving.store import Conversation, Feedback

HELLO = [{"role": "user", "content": "hello, where is my order?"}]


def test_completion_has_the_openai_shape_and_is_stored(make_client, serve_params):
    client = make_client(serve_params)
    r = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO, "user": "u1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "chatforge"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["completion_tokens"] <= 6  # default_max_tokens
    assert (
        usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        and usage["prompt_tokens"] > 0
    )
    assert body["chatforge"]["variant"] == "lm" and 0.0 < body["chatforge"]["confidence"] <= 1.0
    service = client.app.state.service
    with service.sessions() as s:
        conv = s.get(Conversation, body["id"])
        assert conv.variant == "lm" and conv.user == "u1" and conv.lang == "en" and conv.latency_ms > 0
        assert [(m.role, m.content) for m in conv.messages] == [
            ("user", HELLO[0]["content"]),
            ("assistant", choice["message"]["content"]),
        ]


def test_greedy_repeat_is_a_cache_hit_with_the_same_answer(make_client, serve_params):
    client = make_client(serve_params)
    first = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()
    second = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()
    assert (first["chatforge"]["cached"], second["chatforge"]["cached"]) == (False, True)
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    metrics = client.get("/metrics").text
    assert "chatforge_cache_hits_total 1.0" in metrics and "chatforge_cache_misses_total 1.0" in metrics


def test_a_sampled_reply_is_seeded_by_its_conversation_so_it_repeats_and_is_cached(make_client, serve_params):
    from chatforge.runtime.decode import conversation_seed

    assert "temperature" not in serve_params  # the default decoding: serve.temperature 0.7, top_p 0.9, seed 0
    ask = {"model": "chatforge", "messages": HELLO, "max_tokens": 12}
    client = make_client(serve_params)
    first = client.post("/v1/chat/completions", json=ask).json()
    again = client.post("/v1/chat/completions", json=ask).json()
    assert (first["chatforge"]["cached"], again["chatforge"]["cached"]) == (False, True)
    text = first["choices"][0]["message"]["content"]
    # a fresh service (cold cache) samples the same reply: the seed is the conversation's, serve.seed 0
    fresh = make_client(serve_params)
    assert fresh.post("/v1/chat/completions", json=ask).json()["choices"][0]["message"]["content"] == text
    seeded = {**ask, "temperature": 0.7, "top_p": 0.9, "seed": conversation_seed(HELLO, 0)}
    seeded_reply = fresh.post("/v1/chat/completions", json=seeded).json()
    # the same sampling (seed included) is the same cache key: answered from the cache, the same text
    assert seeded_reply["choices"][0]["message"]["content"] == text and seeded_reply["chatforge"]["cached"] is True
    # another serve.seed draws other replies: over 8 conversations, not all equal to seed 0's
    other = make_client(serve_params | {"seed": 1})
    asks = [[{"role": "user", "content": f"where is order {n}?"}] for n in range(8)]
    replies = [[c.post("/v1/chat/completions", json={**ask, "messages": m}).json()["choices"][0]["message"]["content"]
                for m in asks] for c in (fresh, other)]
    assert replies[0] != replies[1]
    # a request's own seed is honoured (and cached under that seed)
    own = {**ask, "seed": 3}
    assert fresh.post("/v1/chat/completions", json=own).json()["chatforge"]["cached"] is False
    assert fresh.post("/v1/chat/completions", json=own).json()["chatforge"]["cached"] is True


def test_stream_sends_chunks_then_done_and_matches_the_plain_answer(make_client, serve_params):
    client = make_client(serve_params)
    plain = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "chatforge",
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_auth_errors_have_exact_status_and_message(make_client, serve_params):
    client = make_client(serve_params)
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200  # the one open route
    r = client.get("/v1/models", headers={"Authorization": ""})
    assert r.status_code == 401
    assert r.json()["error"] == {
        "message": "missing API key: send the header 'Authorization: Bearer <key>' "
        "(create a key with `chatforge keys add NAME`)",
        "type": "invalid_request_error",
        "code": "missing_api_key",
        "param": None,
    }
    r = client.post(
        "/v1/chat/completions",
        json={"model": "chatforge", "messages": HELLO},
        headers={"Authorization": "Bearer cf-not-a-key"},
    )
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "invalid API key: it is not in this server's keys file"
    r = client.get("/metrics", headers={"Authorization": "Basic abc"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")


def test_rate_limit_returns_429_with_retry_after(make_client, serve_params):
    client = make_client(serve_params | {"rate_limit": {"requests_per_minute": 1, "burst": 2}})
    assert [client.get("/v1/models").status_code for _ in range(2)] == [200, 200]
    r = client.get("/v1/models")
    assert r.status_code == 429
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert error["message"].startswith(
        "rate limit exceeded for this API key (1 requests per minute, burst 2); retry in "
    )
    # moving window: 2 requests per 120 s; the next is allowed when the first leaves the window
    assert 115 <= int(r.headers["Retry-After"]) <= 121


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"messages": HELLO * 5},
            "too many messages: 5 > 4 (serve.limits.max_messages); send a shorter history",
        ),
        (
            {"messages": [{"role": "user", "content": "x" * 201}]},
            "messages too long: 201 characters > 200 (serve.limits.max_chars)",
        ),
        ({"max_tokens": 17}, "max_tokens = 17 exceeds this server's limit of 16 (serve.limits.max_tokens)"),
        (
            {"messages": [{"role": "system", "content": "hi"}]},
            "messages must contain at least one message with role 'user'",
        ),
        ({"persona": "grumpy"}, "unknown persona 'grumpy'; valid personas: friendly, precise"),
        ({"model": "chatforge:grumpy"}, "unknown persona 'grumpy'; valid personas: friendly, precise"),
        (
            {"messages": []},
            "invalid request: messages: List should have at least 1 item after validation, not 0",
        ),
        ({"temperature": 3}, "invalid request: temperature: Input should be less than or equal to 2"),
        (
            {"messages": [{"role": "robot", "content": "hi"}]},
            "invalid request: messages.0.role: Input should be 'system', 'developer', 'user', 'assistant', 'tool' or 'function'",
        ),
        ({"stop": [""]}, "stop must be up to 4 non-empty strings"),
    ],
)
def test_bounds_and_bad_requests_get_400_saying_what_is_wrong(make_client, serve_params, change, message):
    client = make_client(serve_params)
    r = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO} | change)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == message
    assert "Traceback" not in r.text


def test_unknown_model_is_404_listing_models_and_bad_json_is_400(make_client, serve_params):
    client = make_client(serve_params)
    r = client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": HELLO})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == (
        "model 'gpt-4' not found; available models: chatforge, chatforge:friendly, chatforge:precise, lm"
    )
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert client.get("/v1/nothing").status_code == 404


def test_persona_sets_system_prompt_and_sampling(make_client, serve_params):
    client = make_client(serve_params)
    body = client.post(
        "/v1/chat/completions", json={"model": "chatforge:friendly", "messages": HELLO, "seed": 1}
    ).json()
    assert body["chatforge"]["persona"] == "friendly"
    with client.app.state.service.sessions() as s:
        conv = s.get(Conversation, body["id"])
        assert conv.persona == "friendly" and conv.messages[0].role == "system"
        assert conv.messages[0].content == "Be friendly."
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["chatforge", "chatforge:friendly", "chatforge:precise", "lm"]
    assert models["personas"]["precise"]["temperature"] == 0.7


WIDE = {"max_messages": 4, "max_chars": 200, "max_tokens": 128, "default_max_tokens": 128}


def test_low_confidence_answers_become_the_fallback_in_the_users_language(make_client, serve_params):
    client = make_client(serve_params | {"confidence_threshold": 0.99, "limits": WIDE})
    zh = client.post(
        "/v1/chat/completions",
        json={"model": "chatforge", "messages": [{"role": "user", "content": "我的订单在哪里？"}]},
    ).json()
    en = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()
    assert zh["choices"][0]["message"]["content"] == "抱歉，我不太确定您的意思，能换个说法或联系人工客服吗？"
    assert en["choices"][0]["message"]["content"] == (
        "Sorry, I'm not sure I understood. Could you rephrase, or ask for a human agent?"
    )
    assert zh["chatforge"]["fallback"] and en["chatforge"]["fallback"]
    with client.app.state.service.sessions() as s:
        assert s.get(Conversation, zh["id"]).fallback is True
    assert 'chatforge_fallbacks_total{variant="lm"} 2.0' in client.get("/metrics").text


def test_classifier_variant_answers_from_responses_with_calibrated_confidence(
    make_client, serve_params, tiny_backends
):
    params = serve_params | {"variants": [{"name": "clf", "model": "unused", "weight": 1}]}
    client = make_client(params)
    body = client.post(
        "/v1/chat/completions",
        json={"model": "chatforge", "messages": [{"role": "user", "content": "查询北京天气"}]},
    ).json()
    backend = tiny_backends["clf"]
    expected = backend.answer([{"role": "user", "content": "查询北京天气"}], None, lang="zh")
    assert body["choices"][0]["message"]["content"] in {"今天北京晴，15-25℃。", "您的订单已发货。"}
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["chatforge"]["confidence"] == pytest.approx(expected.confidence)
    with client.app.state.service.sessions() as s:
        assert s.get(Conversation, body["id"]).intent == expected.intent


def test_blocked_input_gets_the_blocked_message_and_is_never_cached(make_client, serve_params):
    client = make_client(serve_params | {"limits": WIDE})
    req = {"model": "chatforge", "messages": [{"role": "user", "content": "ＦＵ\u200bＣＫ you"}]}
    for _ in range(2):
        body = client.post("/v1/chat/completions", json=req).json()
        assert body["choices"][0]["message"]["content"] == "Sorry, I can't help with that."
        assert body["choices"][0]["finish_reason"] == "content_filter"
        assert body["chatforge"]["cached"] is False and body["chatforge"]["filter"] == "blocked"
    with client.app.state.service.sessions() as s:
        conv = s.get(Conversation, body["id"])
        assert (conv.input_filter, conv.filter_terms) == ("blocked", "fuck")
    metrics = client.get("/metrics").text
    assert 'chatforge_filter_actions_total{action="blocked",stage="input"} 2.0' in metrics
    assert "chatforge_cache_hits_total 0.0" in metrics


def test_mask_mode_stars_the_term_before_the_model_sees_it(make_client, serve_params):
    params = serve_params | {"filter": serve_params["filter"] | {"mode": "mask"}}
    client = make_client(params)
    body = client.post(
        "/v1/chat/completions",
        json={"model": "chatforge", "messages": [{"role": "user", "content": "this SHIT order is late"}]},
    ).json()
    assert body["chatforge"]["filter"] == "masked"
    with client.app.state.service.sessions() as s:
        assert s.get(Conversation, body["id"]).messages[0].content == "this **** order is late"


def test_feedback_is_stored_and_unknown_ids_are_404(make_client, serve_params):
    client = make_client(serve_params)
    cid = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()["id"]
    r = client.post(
        "/v1/feedback", json={"completion_id": cid, "rating": -1, "correction": "It ships tomorrow."}
    )
    assert r.status_code == 200 and r.json()["completion_id"] == cid
    with client.app.state.service.sessions() as s:
        row = s.scalars(select(Feedback)).one()
        assert (row.conversation_id, row.rating, row.correction) == (cid, -1, "It ships tomorrow.")
    r = client.post("/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": 1})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == (
        "completion 'chatcmpl-nope' not found: send the `id` of a chat completion this service returned"
    )
    r = client.post("/v1/feedback", json={"completion_id": cid, "rating": 5})
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        "invalid request: rating: Input should be less than or equal to 1"
    )


def test_pinned_variant_and_ab_split_are_recorded(make_client, serve_params, tiny_models):
    params = serve_params | {
        "variants": [{"name": "lm", "model": "x", "weight": 1}, {"name": "clf", "model": "y", "weight": 1}]
    }
    client = make_client(params)
    seen = set()
    for i in range(12):
        body = client.post(
            "/v1/chat/completions", json={"model": "chatforge", "messages": HELLO, "user": f"u{i}"}
        ).json()
        seen.add(body["chatforge"]["variant"])
    assert seen == {"lm", "clf"}
    pinned = client.post(
        "/v1/chat/completions", json={"model": "clf", "messages": HELLO, "user": "u0"}
    ).json()
    assert pinned["chatforge"]["variant"] == "clf" and pinned["model"] == "clf"


def test_web_page_and_openapi_are_served(make_client, serve_params):
    client = make_client(serve_params)
    page = client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and 'id="composer"' in page.text
    assert client.get("/static/chat.js").status_code == 200
    assert client.get("/openapi.json", headers={"Authorization": ""}).status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/models", "/v1/feedback", "/healthz", "/metrics"} <= set(paths)


def test_a_fallback_is_cut_to_max_tokens_and_usage_counts_what_was_shown(make_client, serve_params, tiny_backends):
    client = make_client(serve_params | {"confidence_threshold": 0.99})
    tokenizer = tiny_backends["lm"].tokenizer
    fallback_en = "Sorry, I'm not sure I understood. Could you rephrase, or ask for a human agent?"
    for max_tokens, finish in ((3, "length"), (16, "length")):
        body = client.post(
            "/v1/chat/completions", json={"model": "chatforge", "messages": HELLO, "max_tokens": max_tokens}
        ).json()
        shown = body["choices"][0]["message"]["content"]
        ids = tokenizer(fallback_en, add_special_tokens=False)["input_ids"]
        assert len(ids) > 16  # the tiny tokenizer needs more than 16 tokens for it
        assert shown == tokenizer.decode(ids[:max_tokens]) and fallback_en.startswith(shown)
        assert body["choices"][0]["finish_reason"] == finish
        assert body["usage"]["completion_tokens"] == max_tokens
    client = make_client(serve_params | {"confidence_threshold": 0.99, "limits": WIDE})
    body = client.post("/v1/chat/completions", json={"model": "chatforge", "messages": HELLO}).json()
    assert body["choices"][0]["message"]["content"] == fallback_en
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(tokenizer(fallback_en, add_special_tokens=False)["input_ids"])
