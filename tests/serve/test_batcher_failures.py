"""The batcher's failures: a failed batch fails its requests and the batcher goes on; a failure of the batcher
itself fails every waiting request; no request is stranded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from vggexport.serve.batcher import DynamicBatcher
from vggexport.serve.errors import InternalError
from vggexport.serve.instance import ModelInstance, Pending
from tests.serve.batching import Gate, WorkerKiller, double_unless_negative


def test_failed_batch_fails_every_request_and_the_batcher_goes_on() -> None:
    async def scenario() -> tuple[list[object], list[np.ndarray]]:
        gate = Gate(double_unless_negative)
        batcher = DynamicBatcher(gate, max_batch_size=8, max_queue_delay_ms=50)
        held = await gate.hold(batcher, np.ones((8, 1), np.float32))
        inputs = [np.ones((1, 1), np.float32), -np.ones((1, 1), np.float32), np.ones((2, 1), np.float32)]
        submitted = [asyncio.ensure_future(batcher.submit(x)) for x in inputs]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 4  # the three share the next batch, whatever their timing
        gate.opened.set()
        await held
        failed = await asyncio.wait_for(asyncio.gather(*submitted, return_exceptions=True), 10)
        after = await batcher.submit(np.ones((1, 1), np.float32))
        await batcher.stop()
        return failed, after

    failed, after = asyncio.run(scenario())
    assert all(isinstance(f, ValueError) and "negative" in str(f) for f in failed)
    np.testing.assert_array_equal(after[0], [[2.0]])


def test_a_batcher_failure_fails_every_waiting_request_and_the_next_request_is_batched_afresh() -> None:
    calls = {"n": 0}

    def dies_once(batch: np.ndarray) -> list[np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise WorkerKiller()
        return [batch]

    async def scenario() -> tuple[list[object], list[np.ndarray]]:
        gate = Gate(dies_once)
        batcher = DynamicBatcher(gate, max_batch_size=2, max_queue_delay_ms=20)
        held = await gate.hold(batcher, np.ones((2, 1), np.float32))
        queued = [asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32))) for _ in range(4)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 4  # waiting when the worker dies
        gate.opened.set()
        waiting = await asyncio.wait_for(asyncio.gather(held, *queued, return_exceptions=True), 5)
        after = await asyncio.wait_for(batcher.submit(np.ones((1, 1), np.float32)), 5)
        await batcher.stop()
        return waiting, after

    waiting, after = asyncio.run(scenario())
    assert all(isinstance(w, InternalError) for w in waiting), waiting
    np.testing.assert_array_equal(after[0], [[1.0]])


def test_an_observer_that_raises_fails_the_queue_without_stranding_anyone() -> None:
    def observe(rows: int, queued: float, computed: float) -> None:
        raise RuntimeError("metrics backend down")

    async def scenario() -> list[object]:
        gate = Gate(double_unless_negative)
        batcher = DynamicBatcher(gate, max_batch_size=1, observe=observe)
        held = await gate.hold(batcher, np.ones((1, 1), np.float32))
        queued = [asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32))) for _ in range(3)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 3
        gate.opened.set()
        results = await asyncio.wait_for(asyncio.gather(held, *queued, return_exceptions=True), 5)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    # The first batch was answered before its observer raised; the three behind it fail rather than hang.
    np.testing.assert_array_equal(results[0][0], [[2.0]])  # type: ignore[index]
    assert all(isinstance(r, InternalError) for r in results[1:]), results


def merge_fails(batcher: DynamicBatcher) -> DynamicBatcher:
    """Rows that cannot be joined (a MemoryError from numpy, say) in every batch of more than one request."""
    for instance in batcher.instances:
        def merge(instance: ModelInstance = instance, merge: Callable[[], np.ndarray] = instance.merge) -> np.ndarray:
            if len(instance.running) > 1:
                raise MemoryError("cannot allocate the batch")
            return merge()
        instance.merge = merge  # type: ignore[method-assign]
    return batcher


def test_a_long_run_of_batches_that_fail_to_start_fails_each_and_the_batcher_goes_on() -> None:
    count = 1200  # 600 failed batches in a row: deeper than Python's stack, were each started by the last

    async def scenario() -> tuple[list[object], list[np.ndarray]]:
        gate = Gate(double_unless_negative)
        batcher = merge_fails(DynamicBatcher(gate, max_batch_size=2, max_queue_size=count + 2))
        held = await gate.hold(batcher, np.ones((1, 1), np.float32))  # alone: no merge
        queued = [asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32))) for _ in range(count)]
        await asyncio.sleep(0)
        gate.opened.set()
        await asyncio.wait_for(held, 10)
        failed = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 20)
        after = await asyncio.wait_for(batcher.submit(np.ones((1, 1), np.float32)), 5)
        await batcher.stop()
        return failed, after

    failed, after = asyncio.run(scenario())
    assert all(isinstance(f, MemoryError) for f in failed), {type(f) for f in failed}
    np.testing.assert_array_equal(after[0], [[2.0]])


def test_system_exit_from_inference_fails_the_waiting_requests_and_ends_the_loop() -> None:
    answers: list[asyncio.Future[list[np.ndarray]]] = []

    def exits(batch: np.ndarray) -> list[np.ndarray]:
        raise SystemExit(3)

    async def scenario() -> None:
        batcher = DynamicBatcher(exits, max_batch_size=1)
        for _ in range(3):
            asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32)))
        await asyncio.sleep(0)  # each submit queues its request; the first is running
        answers.extend(p.future for p in (*batcher.instances[0].running, *batcher.waiting))
        await asyncio.sleep(10)  # the loop ends long before this

    with pytest.raises(SystemExit):
        asyncio.run(scenario())
    assert len(answers) == 3 and all(isinstance(a.exception(), InternalError) for a in answers)


def test_a_failed_buffer_allocation_fails_one_batch_and_the_next_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    instance = ModelInstance(double_unless_negative, max_batch_size=4)
    loop = asyncio.new_event_loop()
    instance.running = [Pending(np.zeros((1, 3), np.float32), loop.create_future()) for _ in range(2)]
    instance.merge()  # a buffer for rows of 3
    instance.running = [Pending(np.full((1, 2), i, np.float32), loop.create_future()) for i in range(2)]
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda *a, **k: (_ for _ in ()).throw(MemoryError("no memory")))
    with pytest.raises(MemoryError):
        instance.merge()
    monkeypatch.setattr(np, "empty", real_empty)
    np.testing.assert_array_equal(instance.merge(), [[0.0, 0.0], [1.0, 1.0]])  # not "wrong shape" from a stale buffer
    loop.close()

