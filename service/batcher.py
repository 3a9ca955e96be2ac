"""Micro-batching: concurrent requests share one ONNX run, behind a bounded queue.

Each request submits its queries and awaits their outputs. One worker task takes what is queued,
runs it on a bounded executor, and hands each request its slice. Requests that arrive while a run is
under way are batched into the next one; under load (the previous run held more than one query) the
worker also waits up to `max_wait_s` for more to join a batch that is not full, while a lone request
on an idle server runs at once. When more than `max_queue` queries wait, `submit` raises
`Overloaded` at once: the client gets 429 with Retry-After instead of a latency that grows without
bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Gate:
    """At most `limit` calls waiting or running at once (thread-safe); one more is refused with Overloaded."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit, self.count = name, limit, 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.count >= self.limit:
                raise Overloaded(f"{self.name} queue is full ({self.count} requests waiting or running)")
            self.count += 1

    def leave(self, *_: object) -> None:
        with self._lock:
            self.count -= 1


@dataclass
class _Job:
    inputs: Sequence[Any]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """`await submit(inputs)` -> `run(batch)` outputs for those inputs, batched with concurrent callers.

    `run` maps a list of inputs to a list of outputs of the same length (it runs on `executor`).
    `on_batch(size, seconds)` and `on_depth(queued)` feed the metrics.
    """

    def __init__(self, name: str, run: Callable[[list], list], executor: Executor, max_batch: int = 64,
                 max_wait_s: float = 0.002, max_queue: int = 512,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.name, self.run, self.executor = name, run, executor
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.on_batch, self.on_depth = on_batch, on_depth
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._running = 0
        self._last_size = 0  # queries in the previous run: a lone request does not wait for company
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        """Queries queued or in the run under way."""
        return self._queued + self._running

    async def submit(self, inputs: Sequence[Any]) -> tuple[list, float, float]:
        """Outputs for `inputs`, the seconds they waited in the queue and the seconds their run took."""
        if not inputs:
            return [], 0.0, 0.0
        self._start()
        if self._queued + len(inputs) > self.max_queue and self._queued > 0:
            raise Overloaded(f"{self.name} queue is full ({self._queued} queries waiting)")
        job = _Job(list(inputs), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_depth(self._queued + len(job.inputs))
        self._wake.set()
        return await job.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(Overloaded(f"{self.name} is shutting down"))
        self._jobs.clear()

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def _set_depth(self, queued: int) -> None:
        self._queued = queued
        if self.on_depth:
            self.on_depth(queued)

    def _take(self) -> list[_Job]:
        """Whole jobs up to max_batch queries (a bigger job runs alone: its own request batched it)."""
        jobs, size, dropped = [], 0, 0
        while self._jobs and (not jobs or size + len(self._jobs[0].inputs) <= self.max_batch):
            job = self._jobs.popleft()
            if job.future.done():  # cancelled while queued (deadline passed, client gone): never run it
                dropped += len(job.inputs)
                continue
            jobs.append(job)
            size += len(job.inputs)
        self._set_depth(self._queued - size - dropped)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.max_wait_s > 0 and self._last_size > 1 and self._queued < self.max_batch:
                await asyncio.sleep(self.max_wait_s)  # under load: let concurrent requests join this run
            jobs = self._take()
            if not self._jobs:
                self._wake.clear()
            if not jobs:
                continue
            batch = [x for job in jobs for x in job.inputs]
            started = time.perf_counter()
            self._running = self._last_size = len(batch)
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, batch)
            except Exception as exc:  # the requests in this batch fail; the worker goes on
                log.exception("%s batch of %d failed", self.name, len(batch))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._running = 0
            ran = time.perf_counter() - started
            if self.on_batch:
                self.on_batch(len(batch), ran)
            lo = 0
            for job in jobs:
                hi = lo + len(job.inputs)
                if not job.future.done():  # a cancelled request (client gone) is skipped
                    job.future.set_result((outputs[lo:hi], started - job.queued_at, ran))
                lo = hi
