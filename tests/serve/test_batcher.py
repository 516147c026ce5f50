from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from vggexport.serve.batcher import DynamicBatcher
from vggexport.serve.errors import DeadlineError, InternalError, UnavailableError
from vggexport.serve.instance import ModelInstance, Pending


def double_unless_negative(batch: np.ndarray) -> list[np.ndarray]:
    if (batch < 0).any():
        raise ValueError("negative input")
    return [batch * 2, batch + 1]


class Gate:
    """Holds the worker inside its first batch until the test opens the gate.

    Whatever is submitted while the worker is held is queued, all of it, when the worker next collects:
    which requests can share a batch no longer depends on how fast they arrive.
    """

    def __init__(self, infer: Callable[[np.ndarray], list[np.ndarray]]) -> None:
        self.infer = infer
        self.entered, self.opened = threading.Event(), threading.Event()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.opened.wait(10), "the test never opened the gate"
        return self.infer(batch)

    async def hold(self, batcher: DynamicBatcher, first: np.ndarray) -> asyncio.Future[list[np.ndarray]]:
        """Submit ``first`` and return once the worker is running it (its answer, a future).

        ``first`` must fill a batch (max_batch_size rows), or the worker waits out the queue delay for more.
        """
        running = asyncio.ensure_future(batcher.submit(first))
        assert await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 10), "no batch started"
        return running


def test_concurrent_requests_share_batches_and_get_their_slice_of_every_output() -> None:
    seen: list[int] = []

    async def scenario() -> list[list[np.ndarray]]:
        gate = Gate(double_unless_negative)
        # A full batch closes at once, so the queue delay only bounds how long a partial one would wait.
        batcher = DynamicBatcher(gate, max_batch_size=8, max_queue_delay_ms=10_000,
                                 observe=lambda rows, q, c: seen.append(rows))
        held = await gate.hold(batcher, np.zeros((8, 2), np.float32))
        submitted = [asyncio.ensure_future(batcher.submit(np.full((1, 2), i, np.float32))) for i in range(16)]
        await asyncio.sleep(0)  # let each submit queue its request
        assert batcher.queued_rows == 16
        gate.opened.set()
        results = await asyncio.wait_for(asyncio.gather(held, *submitted), 10)
        await batcher.stop()
        return results[1:]

    for i, (doubled, plus_one) in enumerate(asyncio.run(scenario())):
        np.testing.assert_array_equal(doubled, np.full((1, 2), 2 * i))
        np.testing.assert_array_equal(plus_one, np.full((1, 2), i + 1))
    assert seen == [8, 8, 8]


def test_rows_of_different_shapes_never_share_a_batch() -> None:
    shapes: list[tuple[int, ...]] = []

    def record(batch: np.ndarray) -> list[np.ndarray]:
        shapes.append(batch.shape)
        return [batch]

    async def scenario() -> list[list[np.ndarray]]:
        gate = Gate(record)
        batcher = DynamicBatcher(gate, max_batch_size=8, max_queue_delay_ms=50)
        held = await gate.hold(batcher, np.zeros((8, 4), np.float32))
        submitted = [asyncio.ensure_future(batcher.submit(np.full((1, 2 + i % 2), i, np.float32))) for i in range(4)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 4  # all four wait together: a batcher that mixed shapes would mix them
        gate.opened.set()
        results = await asyncio.wait_for(asyncio.gather(held, *submitted), 10)
        await batcher.stop()
        return results[1:]

    results = asyncio.run(scenario())  # mixing would fail np.concatenate and so every request
    assert [r[0].shape for r in results] == [(1, 2), (1, 3), (1, 2), (1, 3)]
    assert [int(r[0][0, 0]) for r in results] == [0, 1, 2, 3]
    assert shapes == [(8, 4), (1, 2), (1, 3), (1, 2), (1, 3)]  # a request is never split, so this order


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


class WorkerKiller(BaseException):
    """Not an Exception: no batch may raise it, so it fails the batcher itself, not only its batch."""


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


def test_full_queue_is_refused_and_slow_requests_time_out() -> None:
    release = threading.Event()

    def slow(batch: np.ndarray) -> list[np.ndarray]:
        release.wait(5)
        return [batch]

    async def scenario() -> tuple[list[object], object]:
        gate = Gate(slow)
        batcher = DynamicBatcher(gate, max_batch_size=1, max_queue_size=2, timeout_ms=300)
        running = await gate.hold(batcher, np.ones((1, 1), np.float32))  # the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32))) for _ in range(2)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 2
        with pytest.raises(UnavailableError, match="queue is full"):
            await batcher.submit(np.ones((1, 1), np.float32))
        outcomes = await asyncio.gather(running, *queued, return_exceptions=True)
        gate.opened.set()
        release.set()
        await batcher.stop()
        return outcomes, None

    outcomes, _ = asyncio.run(scenario())
    assert all(isinstance(o, DeadlineError) for o in outcomes), outcomes


def test_requests_after_stop_are_refused() -> None:
    async def scenario() -> None:
        batcher = DynamicBatcher(double_unless_negative)
        await batcher.stop()
        with pytest.raises(UnavailableError, match="shutting down"):
            await batcher.submit(np.ones((1, 1), np.float32))

    asyncio.run(scenario())


def test_batch_size_one_turns_batching_off() -> None:
    seen: list[int] = []

    async def scenario() -> None:
        batcher = DynamicBatcher(double_unless_negative, max_batch_size=1, max_queue_delay_ms=50, max_queue_size=8,
                                 observe=lambda rows, q, c: seen.append(rows))
        await asyncio.gather(*(batcher.submit(np.ones((1, 1), np.float32)) for _ in range(5)))
        await batcher.stop()

    asyncio.run(scenario())
    assert seen == [1] * 5


@pytest.mark.parametrize(("size", "queue", "instances", "message"),
                         [(0, None, 1, "max_batch_size"), (8, 4, 1, "max_queue_size"), (8, None, 0, "instances")])
def test_invalid_sizes(size: int, queue: int | None, instances: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(double_unless_negative, max_batch_size=size, max_queue_size=queue, instances=instances)


def test_batches_merged_into_the_kept_buffer_answer_each_request_with_its_own_rows() -> None:
    """Identity outputs are views of the merge buffer; each batch still answers with its own rows, though the
    next batch is merged into the same buffer before the first batch's requests read their answers."""

    async def scenario() -> list[list[np.ndarray]]:
        gate = Gate(lambda batch: [batch, batch[:, :1]])
        batcher = DynamicBatcher(gate, max_batch_size=4, max_queue_delay_ms=10_000)
        held = await gate.hold(batcher, np.zeros((4, 2), np.float32))
        submitted = [asyncio.ensure_future(batcher.submit(np.full((1, 2), i, np.float32))) for i in range(1, 9)]
        await asyncio.sleep(0)
        gate.opened.set()
        results = await asyncio.wait_for(asyncio.gather(held, *submitted), 10)
        await batcher.stop()
        return results[1:]

    for i, (same, first) in enumerate(asyncio.run(scenario()), start=1):
        np.testing.assert_array_equal(same, np.full((1, 2), i))
        np.testing.assert_array_equal(first, np.full((1, 1), i))


def test_a_partial_batch_waits_for_requests_that_arrive_within_the_queue_delay() -> None:
    seen: list[int] = []

    async def scenario() -> None:
        batcher = DynamicBatcher(double_unless_negative, max_batch_size=8, max_queue_delay_ms=1000,
                                 observe=lambda rows, q, c: seen.append(rows))
        first = asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(np.ones((2, 1), np.float32)))
        await asyncio.sleep(0.05)
        assert not first.done() and batcher.queued_rows == 3  # both still wait out the delay
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        await batcher.stop()

    asyncio.run(scenario())
    assert seen == [3]


def test_the_queue_delay_counts_from_arrival_not_from_when_the_batcher_is_free() -> None:
    """As Triton counts it: a request that already waited out the delay behind a running batch starts the next
    batch the moment that one ends, instead of waiting a second delay for company."""

    async def scenario() -> float:
        gate = Gate(double_unless_negative)
        batcher = DynamicBatcher(gate, max_batch_size=8, max_queue_delay_ms=1000)
        held = await gate.hold(batcher, np.zeros((8, 1), np.float32))
        behind = asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32)))
        await asyncio.sleep(1.05)  # longer than the delay, while the first batch still runs
        opened = time.perf_counter()
        gate.opened.set()
        await asyncio.wait_for(asyncio.gather(held, behind), 10)
        answered = time.perf_counter() - opened
        await batcher.stop()
        return answered

    # A second delay would be 1 s; the margin is far above a batch's hand-off, even on a loaded machine.
    assert asyncio.run(scenario()) < 0.8


def test_a_request_with_more_rows_than_a_batch_runs_alone_and_the_queue_goes_on() -> None:
    seen: list[int] = []

    async def scenario() -> list[list[np.ndarray]]:
        batcher = DynamicBatcher(double_unless_negative, max_batch_size=4, max_queue_size=16,
                                 observe=lambda rows, q, c: seen.append(rows))
        big = batcher.submit(np.ones((6, 1), np.float32))
        small = batcher.submit(np.full((1, 1), 3, np.float32))
        results = await asyncio.wait_for(asyncio.gather(big, small), 10)
        await batcher.stop()
        return results

    big, small = asyncio.run(scenario())
    assert big[0].shape == (6, 1) and small[0].tolist() == [[6.0]]
    assert seen == [6, 1]  # never split, never merged past the limit


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


def test_rows_whose_client_left_do_not_count_against_the_queue() -> None:
    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(double_unless_negative, max_batch_size=4, max_queue_size=4, max_queue_delay_ms=500)
        gone = asyncio.ensure_future(batcher.submit(np.ones((3, 1), np.float32)))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnected while its request waited out the delay
        await asyncio.sleep(0)
        answer = await asyncio.wait_for(batcher.submit(np.ones((2, 1), np.float32)), 5)  # 3 + 2 > 4 were it counted
        await batcher.stop()
        return answer

    assert asyncio.run(scenario())[0].shape == (2, 1)


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
