"""Dynamic batching (Triton's dynamic batcher is the model), bounded and fail-safe.

Requests wait in a queue; a single worker takes as many as fit in
``max_batch_size`` rows, or whatever arrived within ``max_queue_delay_ms`` of
the first, runs them as one batch off the event loop, and hands each request
its slice of every output. Requests batch together only when their rows have the
same shape and dtype (images of one size, for the uint8 preprocessing model).

Backpressure: at most ``max_queue_size`` rows wait; beyond that ``submit`` raises
``UnavailableError`` (HTTP 503 with Retry-After). A request that waits longer than
``timeout_ms`` gets ``DeadlineError`` (504). A failed batch fails its requests
only; if the worker itself dies, every waiting request fails at once and the next
request starts a new worker, so no request is ever left hanging.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vggexport.serve.errors import DeadlineError, InternalError, UnavailableError

log = logging.getLogger("vggexport.serve")
BatchObserver = Callable[[int, float, float], None]  # (batch rows, queue seconds, compute seconds)
Outputs = list[np.ndarray]
MAX_BUFFER_BYTES = 64 * 1024 * 1024  # the largest batch buffer kept between batches


@dataclass
class Pending:
    batch: np.ndarray
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.perf_counter)

    def fits_with(self, other: Pending) -> bool:
        return self.batch.shape[1:] == other.batch.shape[1:] and self.batch.dtype == other.batch.dtype


class DynamicBatcher:
    def __init__(self, infer: Callable[[np.ndarray], Sequence[np.ndarray]], *, max_batch_size: int = 64,
                 max_queue_delay_ms: float = 0.0, max_queue_size: int | None = None, timeout_ms: float = 0.0,
                 observe: BatchObserver | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.infer, self.max_batch_size = infer, max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size if max_queue_size is not None else 4 * max_batch_size
        if self.max_queue_size < max_batch_size:
            raise ValueError("max_queue_size must be >= max_batch_size")
        self.timeout = timeout_ms / 1000.0 if timeout_ms > 0 else None
        self.timeout_ms = timeout_ms
        self.observe = observe or (lambda rows, queued, computed: None)
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.queued_rows = 0
        self.inference = InferenceThread(infer)
        self.worker: asyncio.Task[None] | None = None
        self.carry: Pending | None = None
        self.running: list[Pending] = []
        self.closed = False
        # merge()'s batch buffer: ONNX Runtime reads it only during its run, and the next batch is merged only
        # after that run has returned.
        self.buffer: np.ndarray | None = None
        self.buffer_key: tuple[tuple[int, ...], np.dtype] | None = None

    @property
    def alive(self) -> bool:
        return not self.closed

    def start(self) -> None:
        if self.closed:
            raise UnavailableError("the server is shutting down")
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self.run(), name="vggexport-batcher")
            self.worker.add_done_callback(self.worker_ended)

    async def stop(self) -> None:
        self.closed = True
        if self.worker is not None and not self.worker.done():  # a dead worker was reported when it died
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self.worker = None
        self.fail_waiting(UnavailableError("the server is shutting down"))
        self.inference.stop()

    async def submit(self, batch: np.ndarray) -> Outputs:
        """Queue ``batch`` (N rows) and wait for each output's N rows."""
        self.start()
        rows = len(batch)
        if self.queued_rows + rows > self.max_queue_size:
            raise UnavailableError(f"the queue is full ({self.queued_rows} of {self.max_queue_size} images "
                                   "waiting); retry later")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self.queue.put_nowait(Pending(batch, future))
        self.queued_rows += rows
        if self.timeout is None:
            return await future
        # One timer per request, cancelled with its answer (asyncio.wait_for would add a second future and a
        # task's worth of callbacks). A request that times out is done, so its batch skips or drops it.
        timer = loop.call_later(self.timeout, self.expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def expire(self, future: asyncio.Future[Outputs]) -> None:
        if not future.done():
            future.set_exception(DeadlineError(f"the request timed out after {self.timeout_ms:.0f} ms"))

    def take(self, item: Pending) -> Pending:
        self.queued_rows -= len(item.batch)
        return item

    async def collect(self) -> list[Pending]:
        first = self.carry or self.take(await self.queue.get())
        self.carry = None
        group, rows = [first], len(first.batch)
        deadline = time.perf_counter() + self.max_delay
        while rows < self.max_batch_size:
            timeout = deadline - time.perf_counter()
            try:
                item = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            self.take(item)
            if rows + len(item.batch) > self.max_batch_size or not item.fits_with(first):
                self.carry = item  # starts the next batch; a request is never split
                break
            group.append(item)
            rows += len(item.batch)
        return group

    async def run(self) -> None:
        while True:
            group = await self.collect()
            self.running = [p for p in group if not p.future.done()]  # timed-out clients are gone
            if not self.running:
                continue
            started = time.perf_counter()
            queued = started - min(p.enqueued for p in self.running)
            try:
                merged = self.merge()
                outputs = await self.inference.run(merged)
            except Exception as exc:  # the batch failed: its requests learn it, the worker goes on
                for pending in self.running:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                self.running = []
                continue
            self.deliver(self.unshared(outputs))
            self.observe(len(merged), queued, time.perf_counter() - started)

    def merge(self) -> np.ndarray:
        """The running requests' rows as one batch: a request's own array when it is alone (no copy), else
        one copy of each into a buffer kept from batch to batch while the row shape stays the same."""
        if len(self.running) == 1:
            return self.running[0].batch
        first = self.running[0].batch
        rows = sum(len(p.batch) for p in self.running)
        key = (first.shape[1:], first.dtype)
        if self.buffer is None or self.buffer_key != key:
            self.buffer_key = key
            size = self.max_batch_size * first[:1].nbytes
            self.buffer = np.empty((self.max_batch_size, *key[0]), key[1]) if size <= MAX_BUFFER_BYTES else None
        if self.buffer is None:  # rows too large to keep a whole batch of them around
            return np.concatenate([p.batch for p in self.running])
        return np.concatenate([p.batch for p in self.running], out=self.buffer[:rows])

    def unshared(self, outputs: Outputs) -> Outputs:
        """Outputs that are views of the buffer (an identity graph's, say) copied out: the next batch is merged
        into it before the requests that get these slices have answered."""
        if self.buffer is None:
            return outputs
        return [out.copy() if np.may_share_memory(out, self.buffer) else out for out in outputs]

    def deliver(self, outputs: Outputs) -> None:
        offset = 0
        for pending in self.running:
            rows = len(pending.batch)
            if not pending.future.done():
                pending.future.set_result([out[offset : offset + rows] for out in outputs])
            offset += rows
        self.running = []

    def worker_ended(self, task: asyncio.Task[None]) -> None:
        if self.closed:
            return
        if task.cancelled():
            log.error("the batcher's worker was cancelled; failing its waiting requests")
        elif task.exception() is not None:
            log.error("the batcher's worker died", exc_info=task.exception())
        self.fail_waiting(InternalError("inference failed"))

    def fail_waiting(self, exc: Exception) -> None:
        """Fail the running batch and everything queued, so no request waits for a worker that is gone."""
        waiting = [*self.running, *([self.carry] if self.carry else [])]
        self.running, self.carry = [], None
        while not self.queue.empty():
            waiting.append(self.take(self.queue.get_nowait()))
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(exc)
        self.queued_rows = 0


class InferenceThread:
    """The one thread batches run on (ONNX Runtime parallelises inside a run). A batch goes in through a
    SimpleQueue and its outputs come back in one ``call_soon_threadsafe``: about half of what ``run_in_executor``
    costs the event loop per batch (a second future, its chaining callbacks and the executor's locks)."""

    def __init__(self, infer: Callable[[np.ndarray], Sequence[np.ndarray]]) -> None:
        self.infer = infer
        self.inbox: queue.SimpleQueue[tuple[Any, asyncio.Future[Outputs], np.ndarray] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def run(self, batch: np.ndarray) -> asyncio.Future[Outputs]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        if self.thread is None:  # started on first use: a --workers parent builds its app but never serves
            self.thread = threading.Thread(target=self.serve, name="vggexport-infer", daemon=True)
            self.thread.start()
        self.inbox.put((loop, future, batch))
        return future

    def serve(self) -> None:
        while (item := self.inbox.get()) is not None:
            loop, future, batch = item
            outputs, error = None, None
            try:
                outputs = list(self.infer(batch))
            except BaseException as exc:  # all of them, as an executor would: the batcher decides what is fatal
                error = exc
            try:
                loop.call_soon_threadsafe(settle, future, outputs, error)
            except RuntimeError:
                pass  # the loop has closed: no one is waiting for this batch any more

    def stop(self) -> None:
        """Wait for the batch running now, if any (as ``executor.shutdown(wait=True)`` did), then end the thread."""
        if self.thread is not None:
            self.inbox.put(None)
            self.thread.join()
            self.thread = None


def settle(future: asyncio.Future[Outputs], outputs: Outputs | None, error: BaseException | None) -> None:
    if future.done():  # the worker was cancelled while the batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outputs or [])
