"""The seed's serving architecture as deployed, every part a real process on this machine:

    client --TLS--> nginx (deploy/nginx.conf as committed) --least_conn--> two `chatforge serve`
    instances --> Redis (answer cache, rate-limit windows) + PostgreSQL (conversation store)
    and Prometheus-style scrapes of each instance's /metrics.

Through the balancer: the cache, the per-key rate limit and the conversation history hold across
the instances, and each instance's /metrics can be scraped directly (the balancer refuses it)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from chatforge.serving.auth import add_key
from chatforge.serving.store import Conversation, Feedback, open_store

BURST = 10  # per key; at 6 requests per minute the window is 100 s, so nothing refills during the test
CHAT = "/v1/chat/completions"


def scrape(url: str, key: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """An instance's /metrics, scraped directly as Prometheus would: {(sample name, labels): value}."""
    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    assert "# TYPE chatforge_requests_total counter" in r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> int:
    return int(sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls))


def test_cache_rate_limit_and_history_hold_across_balanced_instances(
    tmp_path, base_params, api_key, redis_server, postgres_url, chatforge_serve, nginx
):
    keys_file = api_key[0]
    # one key per check: the rate limit counts every request of a key, so they must not share a budget
    keys = {name: add_key(keys_file, name=name) for name in ("cache", "limited", "history", "monitor")}
    params = base_params | {
        "redis_url": redis_server.url,
        "database_url": postgres_url,
        "rate_limit": {"requests_per_minute": 6, "burst": BURST},
    }
    started = time.monotonic()
    # a new, empty database: both instances create the tables at the same moment
    a, b = chatforge_serve(params, keys_file, instances=2)
    address = {f"127.0.0.1:{a.port}": "a", f"127.0.0.1:{b.port}": "b"}
    lb = nginx(list(address))
    print(f"stack up in {time.monotonic() - started:.1f} s")

    def client(name: str) -> httpx.Client:
        return httpx.Client(
            base_url=lb.url,
            verify=lb.ssl_context(),
            timeout=60,
            headers={"Authorization": f"Bearer {keys[name][1]}"},
        )

    def served_by(path: str, expected: int) -> list[tuple[str, str]]:
        """(status, instance a|b) of each request to `path` nginx passed on, in order; nginx writes a
        line just after the response, so wait until all `expected` are there."""
        deadline = time.monotonic() + 5
        while True:
            rows = [
                (status, address.get(up, up))
                for status, up, request in lb.served_by()
                if request.split(" ", 1)[1] == path
            ]
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def chat(c: httpx.Client, content: str, **extra: Any) -> httpx.Response:
        return c.post(
            CHAT,
            json={
                "model": "chatforge",
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 8,
                **extra,
            },
        )

    # (a) the answer cache is one Redis: an answer computed by one instance is a hit on the other
    with client("cache") as c:
        answers = [chat(c, "Is the answer cache shared between instances?") for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert [r.json()["chatforge"]["cached"] for r in answers] == [False, True, True, True]
    assert len({r.json()["choices"][0]["message"]["content"] for r in answers}) == 1
    route = served_by(CHAT, 4)
    assert {who for _, who in route} == {"a", "b"}, f"nginx sent every request to one instance: {route}"
    computed_by = route[0][1]
    metrics = {"a": scrape(a.url, keys["monitor"][1]), "b": scrape(b.url, keys["monitor"][1])}
    other = "b" if computed_by == "a" else "a"
    # the other instance answered from the cache without ever computing the answer itself
    assert total(metrics[computed_by], "chatforge_cache_misses_total") == 1
    assert total(metrics[other], "chatforge_cache_misses_total") == 0
    assert total(metrics[other], "chatforge_cache_hits_total") == sum(who == other for _, who in route) >= 1
    assert sum(total(m, "chatforge_cache_hits_total") for m in metrics.values()) == 3

    # (b) the rate limit is one budget per key over both instances (its window lives in Redis)
    with client("limited") as c:
        statuses = [c.get("/v1/models").status_code for _ in range(3 * BURST)]
    assert sorted(set(statuses)) == [200, 429], statuses
    assert statuses.count(200) == BURST, f"{statuses.count(200)} of {3 * BURST} allowed with burst {BURST}"
    assert statuses[:BURST] == [200] * BURST  # nothing refilled: the first BURST pass, none after
    models_route = served_by("/v1/models", 3 * BURST)
    assert {who for _, who in models_route} == {"a", "b"}, models_route
    assert sorted(status for status, _ in models_route) == sorted(str(s) for s in statuses)

    # (c) the conversation history is one PostgreSQL: what both instances answered is there, and
    # feedback on a completion instance a answered works through the balancer wherever it lands
    history_id = keys["history"][0].id
    with client("history") as c:
        for i in range(3):
            r = chat(c, f"History question number {i}", user=f"user-{i}")
            assert r.status_code == 200, r.text
        streamed = chat(c, "A streamed question", stream=True)  # the SSE location of the config
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith(
            "text/event-stream"
        )
        assert streamed.text.rstrip().endswith("data: [DONE]"), streamed.text[-300:]
    direct = httpx.post(
        f"{a.url}{CHAT}",
        headers={"Authorization": f"Bearer {keys['history'][1]}"},
        timeout=60,
        json={"model": "chatforge", "messages": [{"role": "user", "content": "Answered by a"}]},
    )
    assert direct.status_code == 200, direct.text
    completion_id = direct.json()["id"]
    ratings = []
    with client("history") as c:
        for rating in (1, -1, 1, -1):  # alternated by nginx: stop once one landed on instance b
            r = c.post("/v1/feedback", json={"completion_id": completion_id, "rating": rating})
            assert r.status_code == 200, r.text
            ratings.append(rating)
            if ("200", "b") in served_by("/v1/feedback", len(ratings)):
                break
    feedback_route = served_by("/v1/feedback", len(ratings))
    assert ("200", "b") in feedback_route, f"no feedback reached instance b: {feedback_route}"

    sessions = open_store(postgres_url)
    with sessions() as session:
        conversations = dict(
            session.execute(
                select(Conversation.api_key_id, func.count()).group_by(Conversation.api_key_id)
            ).all()
        )
        stored = session.execute(
            select(Feedback.rating, Feedback.current)
            .where(Feedback.conversation_id == completion_id)
            .order_by(Feedback.id)
        ).all()
    sessions.kw["bind"].dispose()
    assert conversations == {keys["cache"][0].id: 4, history_id: 5}
    assert [tuple(r) for r in stored] == [(r, i == len(ratings) - 1) for i, r in enumerate(ratings)]

    # the balancer answers these itself: /metrics stays private, and a body over the committed
    # client_max_body_size (256k) never reaches an instance
    with client("monitor") as c:
        assert c.get("/metrics").status_code == 404
        big = c.post(
            CHAT,
            content=b'{"messages": "' + b"x" * 300_000 + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413 and "nginx" in big.text

    # (d) each instance's /metrics, scraped directly: together they counted every answered request,
    # and both answered some
    metrics = {"a": scrape(a.url, keys["monitor"][1]), "b": scrape(b.url, keys["monitor"][1])}
    answered = {
        who: total(m, "chatforge_requests_total", route=CHAT, status="200") for who, m in metrics.items()
    }
    assert answered["a"] > 0 and answered["b"] > 0, answered
    assert answered["a"] + answered["b"] == sum(conversations.values()) == 9
    allowed = {
        who: total(m, "chatforge_requests_total", route="/v1/models", status="200")
        for who, m in metrics.items()
    }
    refused = {
        who: total(m, "chatforge_requests_total", route="/v1/models", status="429")
        for who, m in metrics.items()
    }
    assert sum(allowed.values()) == BURST and sum(refused.values()) == 2 * BURST, (allowed, refused)
    assert all(allowed[w] + refused[w] > 0 for w in "ab"), (allowed, refused)
    assert not any(total(m, "chatforge_requests_total", status="413") for m in metrics.values())
    print(
        f"answered by a/b: {answered}; /v1/models allowed {allowed} refused {refused}; "
        f"feedback routed {feedback_route}; whole test {time.monotonic() - started:.1f} s"
    )
