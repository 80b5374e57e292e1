"""Server-side micro-batching: concurrent requests share onnxruntime calls.

How it works, in one event loop (uvicorn's):

1. A request's texts, already tokenised, are appended to one FIFO queue of *inputs* (a request with
   32 texts adds 32 items) and the request awaits a future.
2. One worker coroutine takes up to ``max_batch_size`` items from the head of the queue, whichever
   requests they belong to, and runs them in **one model call on one worker thread**, so the event
   loop keeps reading new requests meanwhile (onnxruntime releases the GIL while it computes).
   Requests that arrive during that call queue up and form the next batch: under load batches fill
   by themselves, and a lone request is run at once, with no added wait. ``max_wait_ms`` can add a
   short wait for a batch to fill; it defaults to 0.
3. Inside a call the items are sorted by length and cut into groups of similar length (powers of two:
   up to 16 tokens, 32, 64, ...), one ``run`` per group, so a 5-token query is not padded to the
   256 tokens of a passage batched with it.
4. Each vector goes back to its request; a request is answered when all of its inputs are done.

The queue is bounded: when ``max_queued_inputs`` inputs already wait, a new request is refused at
once (``Overloaded``, answered 503 by the server) instead of growing memory and latency without
limit. A single request larger than the bound is still taken when the queue is empty.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full; the request was not queued.

    Attributes:
        queued: inputs waiting when the request came.
        limit: ``max_queued_inputs``.
    """

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} inputs are queued (limit {limit})")
        self.queued = queued
        self.limit = limit


def length_groups(lengths: Sequence[int], max_group: int) -> list[list[int]]:
    """Indices grouped by length bucket (next power of two, at least 16), each group at most ``max_group``.

    Within a group the longest item is at most twice the shortest (above 16 tokens), which bounds
    the compute spent on padding.

    Args:
        lengths: token count of each item.
        max_group: most items per group.
    """
    buckets: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        bucket = max(16, 1 << max(0, n - 1).bit_length())
        buckets.setdefault(bucket, []).append(i)
    groups = []
    for bucket in sorted(buckets):
        idx = buckets[bucket]
        groups.extend(idx[s : s + max_group] for s in range(0, len(idx), max_group))
    return groups


class _Job:
    """One request: its inputs, where their vectors go, and the future it awaits."""

    __slots__ = ("future", "ids", "out", "remaining")

    def __init__(self, ids: list[list[int]], dim: int, future: asyncio.Future) -> None:
        self.ids = ids
        self.out = np.empty((len(ids), dim), dtype=np.float32)
        self.remaining = len(ids)
        self.future = future


class MicroBatcher:
    """Collects the inputs of concurrent requests into shared model calls.

    Args:
        run: embeds one padded group, ``run(list of token-id lists) -> float32 [n, dim]``; called on
            the batcher's single worker thread, one call at a time.
        dim: embedding width.
        max_batch_size: most inputs per model call (over all requests in it).
        max_wait_ms: how long to wait for more inputs when fewer than ``max_batch_size`` are queued;
            0 (the default) runs whatever is queued as soon as the model is free.
        max_queued_inputs: inputs allowed to wait; beyond it requests get ``Overloaded``.
    """

    def __init__(
        self,
        run: Callable[[list[list[int]]], np.ndarray],
        dim: int,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        max_queued_inputs: int = 4096,
    ) -> None:
        if max_batch_size < 1 or max_queued_inputs < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queued_inputs must be ≥ 1, max_wait_ms ≥ 0")
        self._run = run
        self.dim = dim
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queued_inputs = max_queued_inputs
        self._queue: collections.deque[tuple[_Job, int]] = collections.deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-model")
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # Counters for /health and the benchmark.
        self.calls = 0
        self.inputs_done = 0

    @property
    def queued(self) -> int:
        """Inputs waiting for a model call."""
        return len(self._queue)

    async def embed(self, ids: list[list[int]]) -> np.ndarray:
        """Vectors of one request's inputs, computed in shared model calls.

        Args:
            ids: token ids per input (special tokens included, within the model's length).

        Raises:
            Overloaded: ``max_queued_inputs`` inputs already wait.
        """
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._queue and len(self._queue) + len(ids) > self.max_queued_inputs:
            raise Overloaded(len(self._queue), self.max_queued_inputs)
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            # Created on first use, inside the loop that serves requests.
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work(), name="embed-batcher")
        job = _Job(ids, self.dim, loop.create_future())
        self._queue.extend((job, i) for i in range(len(ids)))
        self._wakeup.set()
        return await job.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s and len(self._queue) < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)
            else:
                # Let requests the loop has already read reach the queue before the batch is cut.
                await asyncio.sleep(0)
            n = min(self.max_batch_size, len(self._queue))
            items = [self._queue.popleft() for _ in range(n)]
            # A request that already failed (an earlier call of it raised) needs no more work.
            items = [(job, i) for job, i in items if not job.future.done()]
            if not items:
                continue
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self._run_grouped, [job.ids[i] for job, i in items]
                )
            except Exception as exc:  # answer the requests in this call with the error, keep serving
                log.exception("embedding call failed")
                for job, _ in items:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.calls += 1
            self.inputs_done += len(items)
            for (job, i), vector in zip(items, vectors, strict=True):
                job.out[i] = vector
                job.remaining -= 1
                if job.remaining == 0 and not job.future.done():
                    job.future.set_result(job.out)

    def _run_grouped(self, ids: list[list[int]]) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for group in length_groups([len(row) for row in ids], self.max_batch_size):
            out[group] = self._run([ids[i] for i in group])
        return out

    def close(self) -> None:
        """Stop the worker and its thread (requests still queued are not answered)."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
