"""The dynamic batcher's batching: who shares a batch, how long a partial batch waits, what the queue refuses."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from vggexport.serve.batcher import DynamicBatcher
from vggexport.serve.errors import DeadlineError, UnavailableError
from tests.serve.batching import Gate, double_unless_negative


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

