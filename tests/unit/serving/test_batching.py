"""DecodeScheduler: concurrent requests decoded together, each answered as if alone."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from chatforge.runtime.decode import GenerationConfig, load_generator
from chatforge.serving.batching import DecodeScheduler

PROMPTS = [[{"role": "user", "content": text}] for text in ("hello", "查询北京天气", "where is my order?", "退货要多久？")]
CONFIGS = [GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=5, temperature=0.9, seed=2),
           GenerationConfig(max_new_tokens=8, stop_strings=("e",)), GenerationConfig(max_new_tokens=3)]


def test_requests_arriving_together_are_one_batch_with_the_answers_of_one_at_a_time(tiny_models: dict[str, Any]):
    generator = load_generator(tiny_models["lm"], backend="torch")
    alone = [generator.generate(p, c) for p, c in zip(PROMPTS, CONFIGS, strict=True)]
    batches: list[int] = []
    scheduler = DecodeScheduler(generator, max_batch_size=8, max_wait_ms=300, on_batch=batches.append)
    start = threading.Barrier(len(PROMPTS))
    results: list[Any] = [None] * len(PROMPTS)

    def client(i: int) -> None:
        start.wait()
        results[i] = scheduler.generate(PROMPTS[i], CONFIGS[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert batches == [4]
    assert [(g.token_ids, g.text, g.finish_reason) for g in results] == [(g.token_ids, g.text, g.finish_reason) for g in alone]


def test_batch_size_one_decodes_one_request_at_a_time(tiny_models: dict[str, Any]):
    generator = load_generator(tiny_models["lm"], backend="torch")
    batches: list[int] = []
    scheduler = DecodeScheduler(generator, max_batch_size=1, max_wait_ms=50, on_batch=batches.append)
    futures = [scheduler.submit(p, c) for p, c in zip(PROMPTS, CONFIGS, strict=True)]
    outs = [f.result(timeout=60) for f in futures]
    assert batches == [1, 1, 1, 1]
    assert [g.text for g in outs] == [generator.generate(p, c).text for p, c in zip(PROMPTS, CONFIGS, strict=True)]


def test_a_failing_batch_fails_its_requests_and_the_scheduler_lives_on(tiny_models: dict[str, Any]):
    generator = load_generator(tiny_models["lm"], backend="torch")
    scheduler = DecodeScheduler(generator, max_batch_size=4, max_wait_ms=0)
    bad = scheduler.submit([], GenerationConfig(max_new_tokens=3))  # no messages: encode_prompt refuses
    with pytest.raises(ValueError, match="messages is empty"):
        bad.result(timeout=60)
    assert scheduler.generate(PROMPTS[0], CONFIGS[0]).text == generator.generate(PROMPTS[0], CONFIGS[0]).text


def test_one_failing_request_never_fails_the_others_in_its_batch(tiny_models: dict[str, Any]):
    """Five good requests and one the generator refuses arrive together (one batch of 6): the bad
    one gets its own error, the five get exactly the answers they get alone, streamed text included."""
    generator = load_generator(tiny_models["lm"], backend="torch")
    good = [PROMPTS[i % 4] for i in range(5)]
    config = GenerationConfig(max_new_tokens=6)
    alone = [generator.generate(p, config).text for p in good]
    batches: list[int] = []
    scheduler = DecodeScheduler(generator, max_batch_size=8, max_wait_ms=300, on_batch=batches.append)
    streamed: list[list[str]] = [[] for _ in good]
    futures = [scheduler.submit(p, config, on_text=streamed[i].append) for i, p in enumerate(good[:2])]
    bad = scheduler.submit([], config)  # no messages: encode_prompt refuses, before any token
    futures += [scheduler.submit(p, config, on_text=streamed[i + 2].append) for i, p in enumerate(good[2:])]
    with pytest.raises(ValueError, match="messages is empty"):
        bad.result(timeout=60)
    assert [f.result(timeout=60).text for f in futures] == alone
    assert ["".join(parts) for parts in streamed] == alone  # each streamed once, nothing doubled
    assert batches == [6]
