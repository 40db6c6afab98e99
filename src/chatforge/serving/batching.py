"""Concurrent requests decoded together: one decoding thread per causal LM, dynamic batching.

Requests (cache misses) are queued; the decoding thread takes the first, waits up to
`serve.batch.max_wait_ms` for others, and decodes up to `serve.batch.max_batch_size` of them as one
batch through `Generator.generate_batch` (torch or ONNX: one forward pass per step for the whole
batch, each request with its own sampling, seed, stop strings and limit). Requests that arrive
while a batch is decoding form the next batch. A request whose client went away is cancelled at
the next step. With max_batch_size 1 requests are decoded one at a time (the baseline
bench/serve.py compares against).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from chatforge.runtime.decode import BatchRequest, Generation, GenerationConfig

log = logging.getLogger("chatforge.serving.batching")


@dataclass
class _Job:
    request: BatchRequest
    future: Future[Generation] = field(default_factory=Future)
    started_output: bool = False

    def shown(self, callback: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            self.started_output = True
            callback(*args)

        return call


class DecodeScheduler:
    """`submit(...)` -> a Future of the Generation; decoding happens on one background thread."""

    def __init__(self, generator: Any, *, max_batch_size: int = 8, max_wait_ms: float = 2.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="chatforge-decode", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict[str, str]], config: GenerationConfig, *,
               on_text: Callable[[str], None] | None = None, on_token: Callable[[int, float], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> Future[Generation]:
        job = _Job(BatchRequest(messages, config, cancelled=cancelled))
        # what reached the client is remembered, so a job whose batch failed is decoded again alone
        # only while it has shown nothing (a replay could differ in float rounding from what was sent)
        job.request.on_text = None if on_text is None else job.shown(on_text)
        job.request.on_token = None if on_token is None else job.shown(on_token)
        self._queue.put(job)
        return job.future

    def generate(self, messages: list[dict[str, str]], config: GenerationConfig) -> Generation:
        return self.submit(messages, config).result()

    def _take(self) -> list[_Job]:
        jobs = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            try:
                jobs.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())) if self.max_wait_s
                            else self._queue.get_nowait())
            except queue.Empty:
                break
        return [j for j in jobs if j.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                continue
            if self.on_batch is not None:
                self.on_batch(len(jobs))
            self._decode(jobs)

    def _decode(self, jobs: list[_Job]) -> None:
        """Decode `jobs` as one batch; when the batch fails, every job that has shown nothing yet is
        decoded alone, so one failing request never fails another (each gets its own exception)."""
        try:
            results = self.generator.generate_batch([j.request for j in jobs])
        except Exception as exc:  # the thread lives on
            if len(jobs) == 1:
                log.exception("decoding a request failed")
                jobs[0].future.set_exception(exc)
                return
            log.warning("decoding a batch of %d failed (%s); decoding its requests one by one", len(jobs), type(exc).__name__)
            for job in jobs:
                if job.started_output:
                    job.future.set_exception(exc)
                else:
                    self._decode([job])
            return
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)


__all__ = ["DecodeScheduler"]
