"""service/batcher.py: concurrent submits share one run, the queue is bounded, cancelled work never runs."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batcher import Gate, MicroBatcher, Overloaded


def test_batcher_batches_concurrent_submits_and_maps_outputs_back():
    calls = []

    def run(batch):
        calls.append(list(batch))
        time.sleep(0.05)
        return [x * 10 for x in batch]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", run, pool, max_batch=16, max_wait_s=0.01)
            outs = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(5)))
            await batcher.close()
        return outs

    outs = asyncio.run(main())
    assert [o[0] for o in outs] == [[i * 10, (i + 100) * 10] for i in range(5)]
    assert len(calls) == 1 and sorted(calls[0]) == sorted(x for i in range(5) for x in (i, i + 100))


def test_batcher_refuses_beyond_its_queue_and_survives_a_failing_run():
    def run(batch):
        if "bad" in batch:
            raise ValueError("boom")
        time.sleep(0.05)
        return batch

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", run, pool, max_batch=2, max_wait_s=0, max_queue=2)
            results = await asyncio.gather(*(batcher.submit([f"q{i}"]) for i in range(6)), return_exceptions=True)
            with pytest.raises(ValueError, match="boom"):
                await batcher.submit(["bad"])
            after = await batcher.submit(["ok"])
            await batcher.close()
        return results, after

    results, after = asyncio.run(main())
    assert any(isinstance(r, Overloaded) for r in results)
    assert any(not isinstance(r, Exception) for r in results)
    assert after[0] == ["ok"]


def test_a_query_cancelled_while_queued_is_never_run():
    started, release, calls = threading.Event(), threading.Event(), []

    def run(batch):
        calls.append(list(batch))
        started.set()
        release.wait(5)
        return batch

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", run, pool, max_batch=1, max_wait_s=0)
            first = asyncio.ensure_future(batcher.submit(["a"]))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)  # "a" is running
            dropped = asyncio.ensure_future(batcher.submit(["b"]))
            kept = asyncio.ensure_future(batcher.submit(["c"]))
            await asyncio.sleep(0)
            dropped.cancel()  # what a passed deadline does to a request still in the queue
            assert batcher.queued == 2
            release.set()
            results = await first, await kept
            queued = batcher.queued
            await batcher.close()
        return results, queued

    (first, kept), queued = asyncio.run(main())
    assert first[0] == ["a"] and kept[0] == ["c"]
    assert calls == [["a"], ["c"]] and queued == 0


def test_gate_admits_up_to_its_limit_and_again_once_one_leaves():
    gate = Gate("llm", 2)
    gate.enter()
    gate.enter()
    with pytest.raises(Overloaded, match="llm queue is full"):
        gate.enter()
    gate.leave()
    gate.enter()
    assert gate.count == 2
