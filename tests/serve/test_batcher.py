from __future__ import annotations

import asyncio

import numpy as np
import pytest

from vggexport.serve.batcher import DynamicBatcher


def double_unless_negative(batch: np.ndarray) -> np.ndarray:
    if (batch < 0).any():
        raise ValueError("negative input")
    return batch * 2


def test_concurrent_requests_share_batches() -> None:
    seen: list[int] = []

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(double_unless_negative, max_batch_size=8, max_queue_delay_ms=50,
                                 observe=lambda rows, q, c: seen.append(rows))
        results = await asyncio.gather(*(batcher.submit(np.full((1, 2), i, np.float32)) for i in range(16)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out, np.full((1, 2), 2 * i))
    assert sum(seen) == 16 and max(seen) == 8 and len(seen) == 2


def test_failed_batch_fails_every_request_and_the_batcher_goes_on() -> None:
    async def scenario() -> tuple[list[object], np.ndarray]:
        batcher = DynamicBatcher(double_unless_negative, max_batch_size=8, max_queue_delay_ms=50)
        inputs = [np.ones((1, 1), np.float32), -np.ones((1, 1), np.float32), np.ones((2, 1), np.float32)]
        failed = await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)
        after = await batcher.submit(np.ones((1, 1), np.float32))
        await batcher.stop()
        return failed, after

    failed, after = asyncio.run(scenario())
    assert all(isinstance(f, ValueError) and "negative" in str(f) for f in failed)
    np.testing.assert_array_equal(after, [[2.0]])


def test_batch_size_one_turns_batching_off() -> None:
    seen: list[int] = []

    async def scenario() -> None:
        batcher = DynamicBatcher(double_unless_negative, max_batch_size=1, max_queue_delay_ms=50,
                                 observe=lambda rows, q, c: seen.append(rows))
        await asyncio.gather(*(batcher.submit(np.ones((1, 1), np.float32)) for _ in range(5)))
        await batcher.stop()

    asyncio.run(scenario())
    assert seen == [1] * 5


def test_invalid_size() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(double_unless_negative, max_batch_size=0)
