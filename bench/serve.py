"""Bounded load test of `chatforge serve` on loopback: batched decoding, cache hits, streaming.

Serves the default build (params.yaml serve.variants, e.g. the int8 ONNX folder) when it exists,
else a tiny random model (said in the output), in real `chatforge serve` subprocesses. Concurrent
clients (httpx.AsyncClient) send requests for a fixed duration:
  - miss phase at 1, 4 and 8 clients: every request is new (unique text), so each one runs the
    model; once with serve.batch.max_batch_size 1 (one request decoded at a time: the named
    baseline) and once with the default batching (concurrent misses decoded together);
  - hit phase (8 clients, batched server): requests cycle over a few answered prompts: cache hits;
  - streaming: time to the first content chunk against the whole answer, per request;
plus the same model called directly in-process (no HTTP, no cache, one at a time). Prints rps,
p50/p99 latency, errors and the ratios; saves reports/bench/serve.json.

    python bench/serve.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "bench" / "serve.json"
MAX_TOKENS = 64
CLIENTS = (1, 4, 8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float], errors: int, seconds: float, hits: int, misses: int) -> dict[str, float]:
    return {
        "requests": len(latencies) + errors,
        "ok": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / seconds, 2),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "cache_hits": hits,
        "cache_misses": misses,
    }


async def load(url: str, key: str, *, clients: int, seconds: float, prompt) -> dict[str, float]:
    latencies: list[float] = []
    errors = hits = misses = 0
    counter = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, hits, misses, counter
        while time.perf_counter() < deadline:
            counter += 1
            body = {
                "model": "chatforge",
                "messages": [{"role": "user", "content": prompt(counter)}],
                "max_tokens": MAX_TOKENS,
                "user": f"bench-{counter % 97}",
            }
            started = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/chat/completions", json=body)
            except httpx.HTTPError:
                errors += 1
                continue
            if r.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            if r.json()["chatforge"]["cached"]:
                hits += 1
            else:
                misses += 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=120, limits=limits
    ) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summary(latencies, errors, elapsed, hits, misses)


def direct_baseline(model: str, backend: str, seconds: float) -> dict[str, float]:
    from chatforge.runtime.decode import GenerationConfig
    from chatforge.serving.backends import open_backend

    model_backend = open_backend(model, backend=backend)
    config = GenerationConfig(max_new_tokens=MAX_TOKENS)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        i += 1
        started = time.perf_counter()
        model_backend.answer(
            [{"role": "user", "content": f"baseline question {i}: where is my order?"}], config, lang="en"
        )
        latencies.append(time.perf_counter() - started)
    return summary(latencies, 0, sum(latencies), 0, len(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for the server and the baseline"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))  # tinymodels: the tiny-model factory (not in the wheel)
    from chatforge.io import write_json
    from chatforge.serving.auth import add_key

    serve = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["serve"]
    work = Path(tempfile.mkdtemp(prefix="chatforge-bench-"))
    variant = serve["variants"][0]
    model_path = ROOT / variant["model"]
    if model_path.is_dir():
        model_desc = f"default build {variant['model']} (variant {variant['name']}, backend {variant.get('backend', 'auto')})"
    else:
        from tinymodels import build_tiny_causal_lm

        model_path = build_tiny_causal_lm(work / "tiny")
        variant = {"name": "tiny", "model": str(model_path), "backend": "torch"}
        model_desc = f"TINY random model (2 layers, 64 dims): the default build {serve['variants'][0]['model']} is absent"
    serve["variants"] = [variant | {"model": str(model_path)}]
    serve["database_url"] = f"sqlite:///{work / 'bench.db'}"
    serve["redis_url"] = None
    serve["confidence_threshold"] = 0.0  # measure the model path, not how often the fallback shows
    serve["rate_limit"] = {"requests_per_minute": 10_000_000, "burst": 1_000_000}
    serve["filter"]["lexicons"] = [str(ROOT / p) for p in serve["filter"]["lexicons"]]
    (work / "params.yaml").write_text(yaml.safe_dump({"serve": serve}, allow_unicode=True), encoding="utf-8")
    _, key = add_key(work / "keys.json", name="bench")

    print(f"model: {model_desc}")
    results: dict[str, dict[str, object]] = {}
    for label, batch in (("one_at_a_time", 1), ("batched", serve.get("batch", {}).get("max_batch_size", 8))):
        serve["batch"] = {"max_batch_size": batch, "max_wait_ms": serve.get("batch", {}).get("max_wait_ms", 2)}
        (work / "params.yaml").write_text(yaml.safe_dump({"serve": serve}, allow_unicode=True), encoding="utf-8")
        results[label] = run_server(work, key, args, label, batched=batch > 1)
    # time to first chunk for a 128-token answer: the demo model answers in ~11 tokens, so a tiny
    # random model (it never emits EOS) stands in for a long answer through the same streaming path
    from tinymodels import build_tiny_causal_lm

    tiny = build_tiny_causal_lm(work / "tiny-long")
    long_serve = serve | {"variants": [{"name": "tiny", "model": str(tiny), "backend": "torch"}]}
    (work / "params.yaml").write_text(yaml.safe_dump({"serve": long_serve}, allow_unicode=True), encoding="utf-8")
    long_stream = run_server(work, key, args, "long_stream", batched=False, stream_only=True)["stream"]
    import torch

    torch.set_num_threads(args.threads)
    baseline = direct_baseline(str(model_path), variant.get("backend", "auto"), args.seconds)
    one, many = results["one_at_a_time"], results["batched"]
    result = {
        "model": model_desc,
        "seconds_per_phase": args.seconds,
        "max_tokens": MAX_TOKENS,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "one_at_a_time": one,
        "batched": many,
        "baseline_direct_generation": baseline,
        "stream_128_tokens_tiny_model": long_stream,
        **{f"ratio_batched_vs_one_at_a_time_rps_{c}_clients": round(many[f"miss_{c}"]["rps"] / one[f"miss_{c}"]["rps"], 3)
           if one[f"miss_{c}"]["rps"] else None for c in CLIENTS},
        "ratio_hit_rps_vs_miss_8_clients": round(many["hit_8"]["rps"] / many["miss_8"]["rps"], 3)
        if many["miss_8"]["rps"] else None,
        "errors_total": sum(r["errors"] for run in (one, many) for k, r in run.items() if k.startswith(("miss", "hit"))),
    }
    for label in ("one_at_a_time", "batched"):
        for name, r in result[label].items():
            if name.startswith(("miss", "hit")):
                print(f"{label:>14} {name:>7}: {r['rps']:8.2f} rps  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                      f"errors {r['errors']}  hits {r['cache_hits']}  misses {r['cache_misses']}")
    r = baseline
    print(f"{'direct':>14} {'':>7}: {r['rps']:8.2f} rps  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms")
    s = many["stream"]
    print(f"streaming (batched server, {s['requests']} answers, median {s['tokens_p50']} tokens): first chunk "
          f"p50 {s['first_chunk_p50_ms']} ms of total p50 {s['total_p50_ms']} ms")
    s = long_stream
    print(f"streaming a {s['tokens_p50']:.0f}-token answer (tiny model): first chunk p50 {s['first_chunk_p50_ms']} ms "
          f"of total p50 {s['total_p50_ms']} ms")
    for c in CLIENTS:
        print(f"batched / one at a time, {c} clients: {result[f'ratio_batched_vs_one_at_a_time_rps_{c}_clients']}x rps")
    print(f"errors: {result['errors_total']} (target 0)")
    write_json(result, OUT)
    print(f"saved {OUT.relative_to(ROOT)}")


def stream_times(url: str, key: str, n: int = 6) -> dict[str, float]:
    """Time to the first content chunk and to the end of the answer, for n streamed answers."""
    first, total, tokens = [], [], []
    for i in range(n):
        body = {"model": "chatforge", "stream": True, "max_tokens": 128,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"stream prompt {i} {time.time_ns()}: 请详细介绍一下退货流程和运费规则"}]}
        started = time.perf_counter()
        seen = None
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and seen is None and '"content": "' in line and '"role"' not in line:
                    seen = time.perf_counter() - started
                if '"usage"' in line and '"completion_tokens"' in line:
                    import json

                    tokens.append(json.loads(line[6:])["usage"]["completion_tokens"])
        total.append(time.perf_counter() - started)
        first.append(seen if seen is not None else total[-1])
    return {"requests": n, "first_chunk_p50_ms": round(percentile(first, 0.5) * 1000, 1),
            "total_p50_ms": round(percentile(total, 0.5) * 1000, 1), "tokens_p50": percentile([float(t) for t in tokens], 0.5)}


def run_server(work: Path, key: str, args: argparse.Namespace, label: str, *, batched: bool,
               stream_only: bool = False) -> dict[str, object]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatforge.cli",
            "serve",
            "--params",
            str(work / "params.yaml"),
            "--keys",
            str(work / "keys.json"),
            "--port",
            str(port),
            "--threads",
            str(args.threads),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=server_log,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"server did not start; see {work / 'server.log'}")
        warm = [f"hit prompt {i}: can I change my delivery address?" for i in range(8)]
        for text in warm:  # answer each once so the hit phase only sees hits
            httpx.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
                json={
                    "model": "chatforge",
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": MAX_TOKENS,
                },
            )
        out: dict[str, object] = {}
        if stream_only:
            return {"stream": stream_times(url, key)}
        for clients in CLIENTS:
            out[f"miss_{clients}"] = asyncio.run(
                load(url, key, clients=clients, seconds=args.seconds,
                     prompt=lambda i: f"miss prompt {i} {time.time_ns()}: where is my order?")
            )
            print(f"  {label}: {clients} clients: {out[f'miss_{clients}']}", flush=True)
        if batched:
            out["hit_8"] = asyncio.run(
                load(url, key, clients=8, seconds=args.seconds, prompt=lambda i: warm[i % len(warm)])
            )
            out["stream"] = stream_times(url, key)
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)
        server_log.close()


if __name__ == "__main__":
    main()
