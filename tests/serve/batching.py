"""What the batcher tests share: an inference function that fails on demand, a gate that holds the worker inside
a batch, and an error that fails the batcher itself."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np

from vggexport.serve.batcher import DynamicBatcher


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


class WorkerKiller(BaseException):
    """Not an Exception: no batch may raise it, so it fails the batcher itself, not only its batch."""

