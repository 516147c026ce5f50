"""Dynamic batching (Triton's dynamic batcher is the model).

Requests wait in a queue; a single worker takes as many as fit in
``max_batch_size`` rows, or whatever arrived within ``max_queue_delay_ms`` of
the first, runs them as one batch off the event loop, and hands each request
its slice. When a batch fails, every request in it gets that exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

BatchObserver = Callable[[int, float, float], None]  # (batch rows, queue seconds, compute seconds)


@dataclass
class Pending:
    batch: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int = 64,
                 max_queue_delay_ms: float = 0.0, observe: BatchObserver | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.infer, self.max_batch_size = infer, max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.observe = observe or (lambda rows, queued, computed: None)
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        # One inference thread: ORT already uses every core inside a run.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vggexport-infer")
        self.worker: asyncio.Task[None] | None = None
        self.carry: Pending | None = None

    def start(self) -> None:
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
            self.worker = None
        self.executor.shutdown(wait=True)

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """Queue ``batch`` (N rows) and wait for its N output rows."""
        self.start()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(batch, future))
        return await future

    async def collect(self) -> list[Pending]:
        first = self.carry or await self.queue.get()
        self.carry = None
        group, rows = [first], len(first.batch)
        deadline = time.perf_counter() + self.max_delay
        while rows < self.max_batch_size:
            timeout = deadline - time.perf_counter()
            try:
                item = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if rows + len(item.batch) > self.max_batch_size:
                self.carry = item  # starts the next batch; a request is never split
                break
            group.append(item)
            rows += len(item.batch)
        return group

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self.collect()
            live = [p for p in group if not p.future.cancelled()]  # clients that gave up
            if not live:
                continue
            started = time.perf_counter()
            queued = started - min(p.enqueued for p in live)
            try:
                merged = np.concatenate([p.batch for p in live]) if len(live) > 1 else live[0].batch
                outputs = await loop.run_in_executor(self.executor, self.infer, merged)
            except Exception as exc:  # the batch failed: every request in it learns why
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            self.observe(len(merged), queued, time.perf_counter() - started)
            offset = 0
            for pending in live:
                rows = len(pending.batch)
                if not pending.future.done():
                    pending.future.set_result(outputs[offset : offset + rows])
                offset += rows
