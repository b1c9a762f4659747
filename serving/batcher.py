"""Batching across requests (params ``serve.batch_window_ms``, ``serve.max_batch_texts``).

Without it every request is scored alone, one at a time, so the cache-miss path stays at one request's speed
whatever the number of clients (issue #18). :class:`RequestBatcher` keeps the requests that arrive while the model is
busy (or within a short window) in an asyncio queue; one worker task takes them, oldest first and whole (a request
is never split), up to ``max_texts`` queries + documents, and runs ONE scoring call for all of them in a worker
thread (the event loop keeps accepting requests meanwhile): :meth:`hardneg.rerank.OnnxReranker.rerank_many`, which
embeds the union of their distinct uncached texts and hands each request its own scores and ranking.

When to run a batch:

* at once when the queue holds ``max_texts`` texts;
* after the last batch held a single request (light load): at once, so a lone client pays no window;
* after a batch of several requests (concurrent clients, whose next requests arrive together): when the oldest
  queued request has waited ``window_s``, so the requests of one round travel together instead of a lone first one
  followed by the rest;
* requests that arrived while a batch ran have waited long enough: the next batch takes them at once.

The scoring function isolates failures: when a batch raises, it scores its requests one by one, so only the
request that fails gets the error (:meth:`serving.predictor.HardnegReranker._score_jobs`). Window 0 turns batching
off (the predictor then scores each request alone, as before).

:class:`BatchStats` counts batches for ``/metrics`` (histograms of requests and texts per batch, texts encoded).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# histogram upper bounds (le) of requests and of texts (queries + documents) per batch
REQUEST_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)
TEXT_BUCKETS: tuple[float, ...] = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _Histogram:
    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip([*map(_le, self.bounds), "+Inf"], self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


def _le(x: float) -> str:
    return str(float(x))


class BatchStats:
    """Thread-safe counts of the scoring calls: requests and texts (queries + documents sent) per call, and texts
    the graphs ran (distinct, not cached). A call with batching off counts as a batch of one request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = _Histogram(REQUEST_BUCKETS)
        self.texts = _Histogram(TEXT_BUCKETS)
        self.encoded = 0

    def observe(self, requests: int, texts: int, encoded: int) -> None:
        with self._lock:
            self.requests.observe(requests)
            self.texts.observe(texts)
            self.encoded += int(encoded)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "batches": self.requests.cumulative()[-1][1],
                "requests": {"buckets": self.requests.cumulative(), "sum": self.requests.sum},
                "texts": {"buckets": self.texts.cumulative(), "sum": self.texts.sum},
                "encoded": self.encoded,
            }


@dataclass
class _Job:
    items: Any
    texts: int
    future: asyncio.Future
    arrived: float


# run(list of jobs' items) -> (one result or exception per job, texts encoded); runs in the worker thread
RunBatch = Callable[[list[Any]], tuple[list[Any], int]]


class RequestBatcher:
    """Collects concurrent :meth:`submit` calls into batches for ``run`` (see the module doc). One batch runs at a
    time, in its own worker thread (the runtime already uses every core). Bound to the event loop of its first
    :meth:`submit`; a new loop (a test's) gets a fresh queue."""

    def __init__(
        self, run: RunBatch, *, window_s: float, max_texts: int, stats: BatchStats | None = None
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0 (0: no batcher at all), got {window_s}")
        if max_texts < 1:
            raise ValueError(f"max_texts must be >= 1, got {max_texts}")
        self.run, self.window_s, self.max_texts = run, float(window_s), int(max_texts)
        self.stats = stats
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hardneg-batch"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._gather = False  # the last batch held several requests: wait up to the window for company

    async def submit(self, items: Any, texts: int) -> Any:
        """Queue one request (``items``: what ``run`` gets for it; ``texts``: its queries + documents) and wait for
        its result (or its exception)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._pending, self._wakeup, self._worker = loop, deque(), asyncio.Event(), None
            self._gather = False
        job = _Job(items, int(texts), loop.create_future(), loop.time())
        self._pending.append(job)
        assert self._wakeup is not None
        self._wakeup.set()
        if self._worker is None:
            self._worker = loop.create_task(self._work())
        return await job.future

    def _queued_texts(self) -> int:
        return sum(j.texts for j in self._pending)

    async def _wait_for_company(self) -> None:
        assert self._loop is not None and self._wakeup is not None
        deadline = self._pending[0].arrived + self.window_s
        while self._queued_texts() < self.max_texts:
            delay = deadline - self._loop.time()
            if delay <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except TimeoutError:
                return

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        texts = 0
        while self._pending:
            job = self._pending[0]
            if batch and texts + job.texts > self.max_texts:
                break
            batch.append(self._pending.popleft())
            texts += job.texts
        return [j for j in batch if not j.future.done()]  # done: the caller went away (cancelled)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self._gather:
                    await self._wait_for_company()
                batch = self._take()
                if not batch:
                    continue
                try:
                    results, encoded = await loop.run_in_executor(
                        self._executor, self.run, [j.items for j in batch]
                    )
                except asyncio.CancelledError:
                    for j in batch:
                        j.future.cancel()
                    raise
                except Exception as e:  # the run function isolates request errors: this one concerns them all
                    results, encoded = [e] * len(batch), 0
                for job, res in zip(batch, results, strict=True):
                    if job.future.done():
                        continue
                    if isinstance(res, BaseException):
                        job.future.set_exception(res)
                    else:
                        job.future.set_result(res)
                self._gather = len(batch) > 1
                if self.stats is not None:
                    self.stats.observe(len(batch), sum(j.texts for j in batch), encoded)
        finally:
            if self._worker is asyncio.current_task():
                self._worker = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
