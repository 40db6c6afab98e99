"""The answer cache against a real redis-server: hits, no blocked answers cached, Redis dying."""

from __future__ import annotations

import redis

HELLO = {"model": "chatforge", "messages": [{"role": "user", "content": "where is my order?"}]}


def test_repeated_request_is_a_redis_hit(redis_server, base_params, make_client):
    client = make_client(base_params | {"redis_url": redis_server.url})
    first = client.post("/v1/chat/completions", json=HELLO).json()
    keys = redis.Redis.from_url(redis_server.url).keys("chatforge:answer:*")
    assert len(keys) == 1
    assert 0 < redis.Redis.from_url(redis_server.url).ttl(keys[0]) <= 3600
    second = client.post("/v1/chat/completions", json=HELLO).json()
    assert (first["chatforge"]["cached"], second["chatforge"]["cached"]) == (False, True)
    assert first["choices"] == second["choices"]
    # a second instance sharing the Redis answers from the cache too
    other = make_client(base_params | {"redis_url": redis_server.url})
    assert other.post("/v1/chat/completions", json=HELLO).json()["chatforge"]["cached"] is True


def test_blocked_answers_are_never_cached(redis_server, base_params, make_client, tiny_models, tmp_path):
    # every canned answer of the classifier contains one of these, so every output is blocked
    lexicon = tmp_path / "blocked.txt"
    lexicon.write_text("shipped\nsunny\n发货\n晴\n", encoding="utf-8")
    params = base_params | {
        "redis_url": redis_server.url,
        "variants": [{"name": "clf", "model": str(tiny_models["clf"])}],
        "filter": {"lexicons": [str(lexicon)], "mode": "block"},
    }
    client = make_client(params)
    for _ in range(2):
        body = client.post("/v1/chat/completions", json=HELLO).json()
        assert body["choices"][0]["finish_reason"] == "content_filter"
        assert body["chatforge"]["cached"] is False
    blocked_input = {"model": "chatforge", "messages": [{"role": "user", "content": "shipped?"}]}
    assert client.post("/v1/chat/completions", json=blocked_input).json()["chatforge"]["filter"] == "blocked"
    assert redis.Redis.from_url(redis_server.url).keys("chatforge:answer:*") == []


def test_service_keeps_answering_after_redis_is_killed(redis_server, base_params, make_client):
    client = make_client(base_params | {"redis_url": redis_server.url})
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
    redis_server.kill()
    for _ in range(3):
        r = client.post("/v1/chat/completions", json=HELLO)
        assert r.status_code == 200 and r.json()["chatforge"]["cached"] is False
    assert client.get("/healthz").json()["cache_up"] is False
    metrics = client.get("/metrics").text
    assert "chatforge_cache_up 0.0" in metrics
    assert 'chatforge_cache_errors_total{op="get"} 1.0' in metrics  # reported once, then paused
