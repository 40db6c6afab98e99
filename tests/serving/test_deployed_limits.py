"""`chatforge serve` as deployed (a real process, real sockets): limits before auth and body, and
the per-key rate limit shared by two workers through Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(tmp_path: Path, params: dict[str, Any], keys: Path, *, workers: int = 1) -> Iterator[tuple[str, int]]:
    """Run `chatforge serve` with this serve section; yield (base url, server pid)."""
    params_file = tmp_path / f"params-{workers}-{len(list(tmp_path.iterdir()))}.yaml"
    params_file.write_text(yaml.safe_dump({"serve": params}), encoding="utf-8")
    port = free_port()
    chatforge = shutil.which("chatforge") or str(Path(sys.executable).parent / "chatforge")
    log = (tmp_path / f"serve-{port}.log").open("w")
    env = os.environ | {"CHATFORGE_THREADS": "1"}
    process = subprocess.Popen(
        [chatforge, "serve", "--params", str(params_file), "--keys", str(keys), "--port", str(port),
         "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"chatforge serve exited: {(tmp_path / f'serve-{port}.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("chatforge serve did not answer /healthz within 120 s")
        if workers > 1:  # every worker up (each loads the model)
            while len(psutil.Process(process.pid).children()) < workers and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_a_200_mb_unauthenticated_body_costs_no_memory(tmp_path, base_params, api_key):
    with serve(tmp_path, base_params, api_key[0]) as (url, pid):
        port = int(url.rsplit(":", 1)[1])
        before = rss(pid)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 200000000\r\n\r\n")
            chunk = b"x" * (1 << 20)
            sent = 0
            try:
                for _ in range(200):
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the server answered and closed the connection: the rest is never read
            sock.settimeout(10)
            reply = b""
            try:
                while b"\r\n\r\n" not in reply:
                    data = sock.recv(65536)
                    if not data:
                        break
                    reply += data
            except OSError:
                pass
        grown = rss(pid) - before
        print(f"200 MB unauthenticated body: {sent / 2**20:.0f} MB accepted by the socket before the answer, "
              f"server RSS {before / 2**20:.1f} -> {(before + grown) / 2**20:.1f} MB")
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert grown < 5 * 2**20, f"RSS grew by {grown / 2**20:.1f} MB"
        # an 8 MB header block is refused with 431 in the OpenAI error shape
        r = httpx.get(f"{url}/v1/models", headers={"X-Padding": "a" * 8_000_000}, timeout=60)
        assert r.status_code == 431 and r.json()["error"]["code"] == "request_header_fields_too_large"


def count_allowed(urls: list[str], key: str, n: int) -> int:
    """n quick requests with one key, round-robin over `urls`, each on a new connection."""
    allowed = 0
    for i in range(n):
        with httpx.Client(headers={"Authorization": f"Bearer {key}", "Connection": "close"}) as client:
            status = client.get(f"{urls[i % len(urls)]}/v1/models").status_code
            assert status in (200, 429)
            allowed += status == 200
    return allowed


LIMITS = {"rate_limit": {"requests_per_minute": 6, "burst": 20}}  # 20 per 200 s: no refill during the test


def test_the_rate_limit_holds_across_two_instances_sharing_redis(tmp_path, base_params, api_key, redis_server):
    from contextlib import ExitStack

    def instances(params: dict[str, Any]) -> int:
        with ExitStack() as stack:
            urls = [stack.enter_context(serve(tmp_path, params, api_key[0]))[0] for _ in range(2)]
            return count_allowed(urls, api_key[1], 60)

    # baseline: without Redis each instance counts alone, so the key gets 2 x its burst
    alone = instances(base_params | LIMITS)
    shared = instances(base_params | LIMITS | {"redis_url": redis_server.url})
    print(f"60 requests round-robin over 2 instances, burst 20: {alone} allowed in-process, {shared} with Redis")
    assert (alone, shared) == (40, 20)


def test_the_rate_limit_holds_across_two_workers_sharing_redis(tmp_path, base_params, api_key, redis_server):
    with serve(tmp_path, base_params | LIMITS | {"redis_url": redis_server.url}, api_key[0], workers=2) as (url, pid):
        assert len(psutil.Process(pid).children()) >= 2  # uvicorn's two workers (and its helpers)
        assert count_allowed([url], api_key[1], 60) == 20


def test_sixteen_requests_at_max_chars_keep_memory_bounded(tmp_path, base_params, api_key):
    """Issue 22, serving row 1, as deployed: 16 concurrent requests of serve.limits.max_chars (8,000)
    characters are refused at once (their prompts cannot fit the model's 1,024-token context), and
    16 concurrent requests that fill the context are answered; the server's RSS stays under its
    baseline + 300 MB (README, "Request bounds") and it serves on afterwards."""
    params = base_params | {"limits": base_params["limits"] | {"max_chars": 8000},
                            "batch": {"max_batch_size": 8, "max_wait_ms": 50},
                            "rate_limit": {"requests_per_minute": 600, "burst": 100}}
    with serve(tmp_path, params, api_key[0]) as (url, pid):
        headers = {"Authorization": f"Bearer {api_key[1]}"}

        def ask(content: str, **extra: Any) -> httpx.Response:
            return httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=300,
                              json={"model": "lm", "messages": [{"role": "user", "content": content}], **extra})

        assert ask("hello").status_code == 200
        before, peak, done = rss(pid), [rss(pid)], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak.append(rss(pid))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        longest = "where is my order " * 444 + "x" * 7  # 7,999 characters
        filling = "order " * 240  # about 1,000 tokens of the tiny tokenizer: answered with the room left
        with ThreadPoolExecutor(32) as pool:
            refused = list(pool.map(lambda _: ask(longest), range(16)))
            answered = list(pool.map(lambda _: ask(filling, max_tokens=4), range(16)))
        done.set()
        watcher.join()
        assert [r.status_code for r in refused] == [400] * 16
        assert {r.json()["error"]["code"] for r in refused} == {"context_length_exceeded"}
        assert [r.status_code for r in answered] == [200] * 16, answered[0].text
        assert answered[0].json()["usage"]["prompt_tokens"] <= 1024 - 4
        grown = max(peak) - before
        print(f"RSS before {before / 1e6:.0f} MB, peak {max(peak) / 1e6:.0f} MB")
        assert grown < 300e6, f"RSS grew {grown / 1e6:.0f} MB"
        assert ask("hello").status_code == 200
