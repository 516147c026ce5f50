"""Model instances: several run batches from one queue at once, a fatal batch fails the others' running batches,
and the warm-up runs on every instance's own thread."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from vggexport.serve.batcher import DynamicBatcher
from vggexport.serve.errors import InternalError, UnavailableError
from tests.serve.batching import double_unless_negative


def test_two_instances_run_two_batches_at_once_from_one_queue() -> None:
    """Each batch waits inside inference until another is running beside it: one instance could never pass."""
    meeting = threading.Barrier(2, timeout=10)
    seen: list[int] = []

    def meets(batch: np.ndarray) -> list[np.ndarray]:
        meeting.wait()
        return double_unless_negative(batch)

    async def scenario() -> list[list[np.ndarray]]:
        batcher = DynamicBatcher(meets, max_batch_size=2, instances=2, observe=lambda rows, q, c: seen.append(rows))
        requests = [batcher.submit(np.full((2, 1), i, np.float32)) for i in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*requests), 20)
        await batcher.stop()
        return results

    for i, (doubled, plus_one) in enumerate(asyncio.run(scenario())):
        assert doubled.tolist() == [[2.0 * i]] * 2 and plus_one.tolist() == [[i + 1.0]] * 2
    assert seen == [2, 2, 2, 2]


def test_a_fatal_batch_fails_the_other_instances_batch_but_its_buffer_stays_its_own_until_it_returns() -> None:
    """A batcher failure on one instance fails every request, the other instance's running batch too; that
    instance takes no new batch until its run has returned (its buffer is ONNX Runtime's until then)."""

    class Fatal(BaseException):
        pass

    held, release = threading.Event(), threading.Event()

    def infer(batch: np.ndarray) -> list[np.ndarray]:
        if batch[0, 0] == 7:
            held.set()
            assert release.wait(10)
        if batch[0, 0] == 9:
            raise Fatal
        return double_unless_negative(batch)

    async def scenario() -> tuple[list[object], list[np.ndarray], list[np.ndarray]]:
        batcher = DynamicBatcher(infer, max_batch_size=2, instances=2)
        slow = asyncio.ensure_future(batcher.submit(np.full((2, 1), 7, np.float32)))
        assert await asyncio.get_running_loop().run_in_executor(None, held.wait, 10)
        failed = await asyncio.gather(slow, batcher.submit(np.full((2, 1), 9, np.float32)), return_exceptions=True)
        slow_instance = next(i for i in batcher.instances if i.busy)
        assert batcher.busy == 1 and slow_instance.running  # failed, yet still running: not free
        after = await asyncio.wait_for(batcher.submit(np.full((2, 1), 1, np.float32)), 5)  # the free instance
        release.set()
        while slow_instance.busy:
            await asyncio.sleep(0.01)
        again = await asyncio.wait_for(batcher.submit(np.full((2, 1), 2, np.float32)), 5)
        await batcher.stop()
        return failed, after, again

    failed, after, again = asyncio.run(scenario())
    assert all(isinstance(f, InternalError) for f in failed), failed
    assert after[0].tolist() == [[2.0], [2.0]] and again[0].tolist() == [[4.0], [4.0]]


def test_warm_up_runs_on_every_instance_thread_and_those_threads_then_serve() -> None:
    """CUDA sets up a thread's cuDNN and cuBLAS handles on its first run: the warm-up must be that first run on
    each instance's own thread, not on the thread that builds the server."""
    threads: list[str] = []

    def infer(batch: np.ndarray) -> list[np.ndarray]:
        threads.append(threading.current_thread().name)
        return double_unless_negative(batch)

    batcher = DynamicBatcher(infer, max_batch_size=2, instances=2)
    batcher.warm_up(np.zeros((2, 1), np.float32))
    assert threads == ["vggexport-infer-0", "vggexport-infer-1"]
    started = [instance.thread for instance in batcher.instances]

    async def serve() -> list[np.ndarray]:
        answer = await asyncio.wait_for(batcher.submit(np.full((1, 1), 3, np.float32)), 5)
        await batcher.stop()
        return answer

    doubled, _ = asyncio.run(serve())
    assert doubled.tolist() == [[6.0]] and threads[-1] in {"vggexport-infer-0", "vggexport-infer-1"}
    assert all(thread is not None and not thread.is_alive() for thread in started)  # stop() ended them


def test_a_warm_up_that_fails_raises_its_error_to_the_caller() -> None:
    batcher = DynamicBatcher(double_unless_negative, max_batch_size=2, instances=2)
    with pytest.raises(ValueError, match="negative input"):
        batcher.warm_up(np.full((1, 1), -1, np.float32))
    batcher.stop_instances()
    assert all(instance.thread is None for instance in batcher.instances)


def test_a_stopped_batcher_refuses_a_warm_up_and_starts_no_thread() -> None:
    batcher = DynamicBatcher(double_unless_negative, max_batch_size=2)
    asyncio.run(batcher.stop())
    with pytest.raises(UnavailableError):
        batcher.warm_up(np.zeros((1, 1), np.float32))
    assert batcher.instances[0].thread is None

