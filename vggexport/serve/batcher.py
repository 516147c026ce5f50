"""Dynamic batching (Triton's dynamic batcher is the model), bounded and fail-safe.

Requests wait in a queue. Whenever the inference thread is free, the queue's head
becomes a batch of as many requests as fit in ``max_batch_size`` rows, once the
batch is full, the next request cannot join it, or its first request has waited
``max_queue_delay_ms`` (counted from its arrival, as Triton counts it). The batch
runs off the event loop, and each request gets its slice of every output. Requests
batch together only when their rows have the same shape and dtype (images of one
size, for the uint8 preprocessing model); a request is never split.

There is no worker task: a request's arrival, a batch's end and the queue delay's
timer each start the next batch from the event loop, so a request costs no task
switches beyond its own. Profiled at one client, the worker task's two wake-ups per
batch took about as long as parsing the request.

Backpressure: at most ``max_queue_size`` rows wait; beyond that ``submit`` raises
``UnavailableError`` (HTTP 503 with Retry-After). A request that waits longer than
``timeout_ms`` gets ``DeadlineError`` (504). A failed batch fails its requests
only. If finishing a batch itself fails (the observer raises, say, or inference
raises what is not an ``Exception``), every waiting request fails at once and the
batcher starts afresh with the next request, so no request is ever left hanging.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vggexport.serve.errors import DeadlineError, InternalError, UnavailableError

log = logging.getLogger("vggexport.serve")
BatchObserver = Callable[[int, float, float], None]  # (batch rows, queue seconds, compute seconds)
Outputs = list[np.ndarray]
Finished = Callable[[Outputs | None, BaseException | None], None]
MAX_BUFFER_BYTES = 64 * 1024 * 1024  # the largest batch buffer kept between batches


class Pending:
    __slots__ = ("batch", "future", "enqueued")

    def __init__(self, batch: np.ndarray, future: asyncio.Future[Outputs]) -> None:
        self.batch, self.future, self.enqueued = batch, future, time.perf_counter()

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
        self.waiting: deque[Pending] = deque()
        self.queued_rows = 0  # the rows in ``waiting``
        self.inference = InferenceThread(infer)
        self.running: list[Pending] = []  # the batch on the inference thread now; empty when it is free
        self.started = 0.0  # when that batch was handed to the thread
        self.delay_timer: asyncio.TimerHandle | None = None
        self.closed = False
        # merge()'s batch buffer: ONNX Runtime reads it only during its run, and the next batch is merged only
        # after that run has returned.
        self.buffer: np.ndarray | None = None
        self.buffer_key: tuple[tuple[int, ...], np.dtype] | None = None

    @property
    def alive(self) -> bool:
        return not self.closed

    def start(self) -> None:
        """Nothing to start (the inference thread starts with the first batch); refused once stopped."""
        if self.closed:
            raise UnavailableError("the server is shutting down")

    async def stop(self) -> None:
        self.closed = True
        self.fail_waiting(UnavailableError("the server is shutting down"))
        self.inference.stop()

    async def submit(self, batch: np.ndarray) -> Outputs:
        """Queue ``batch`` (N rows) and wait for each output's N rows."""
        self.start()
        rows = len(batch)
        self.drop_gone()  # rows whose clients left or timed out are not waiting any more
        if self.queued_rows + rows > self.max_queue_size:
            raise UnavailableError(f"the queue is full ({self.queued_rows} of {self.max_queue_size} images "
                                   "waiting); retry later")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self.waiting.append(Pending(batch, future))
        self.queued_rows += rows
        if not self.running:
            self.dispatch()
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

    def dispatch(self, delay_over: bool = False) -> None:
        """Hand the next batch to the inference thread, if it is free and a batch is due (on the event loop).
        A loop, not a recursion through ``finished``: a long run of batches that fail to start cannot overflow
        the stack."""
        while not self.running and not self.closed:
            group = self.due_group(delay_over)
            if not group:
                return
            if self.delay_timer is not None:
                self.delay_timer.cancel()
                self.delay_timer = None
            self.running = group
            self.started = time.perf_counter()
            try:
                self.inference.run(self.merge(), self.finished)
                return
            except Exception as exc:  # rows numpy cannot join (MemoryError), say: this batch fails, not the next
                self.fail_running(exc)

    def due_group(self, delay_over: bool) -> list[Pending]:
        """The head of the queue as a batch, taken off it, once that batch is due; else [] (and the queue delay's
        timer set, when it is what the batch waits for). Requests that timed out while queued are dropped."""
        self.drop_gone()
        waiting = self.waiting
        if not waiting:
            return []
        first, count, rows, closed = waiting[0], 0, 0, False
        for item in waiting:  # the first always goes, alone if it has more rows than a batch (never split)
            if count and (rows + len(item.batch) > self.max_batch_size or not item.fits_with(first)):
                closed = True  # the next request starts the next batch
                break
            count, rows = count + 1, rows + len(item.batch)
        closed = closed or rows >= self.max_batch_size
        if not closed and not delay_over and self.max_delay > 0:
            wait = first.enqueued + self.max_delay - time.perf_counter()
            if wait > 0:
                if self.delay_timer is None:
                    self.delay_timer = asyncio.get_running_loop().call_later(wait, self.delay_ended)
                return []
        group = [self.take() for _ in range(count)]
        return [p for p in group if not p.future.done()]

    def drop_gone(self) -> None:
        """Take the requests at the queue's head that are answered already (timed out, or their client left)."""
        while self.waiting and self.waiting[0].future.done():
            self.take()

    def delay_ended(self) -> None:
        self.delay_timer = None
        self.dispatch(delay_over=True)

    def take(self) -> Pending:
        item = self.waiting.popleft()
        self.queued_rows -= len(item.batch)
        return item

    def finished(self, outputs: Outputs | None, error: BaseException | None) -> None:
        """A batch's end (on the event loop): answer its requests, then start the next batch."""
        if self.closed:
            return  # stop() has failed the batch's requests already
        try:
            if error is not None and not isinstance(error, Exception):
                raise error  # what no batch may raise: handled below, as a failure of the batcher itself
            if error is not None:  # the batch failed: its requests learn it, the batcher goes on
                self.fail_running(error)
            else:
                rows = self.deliver(self.unshared(outputs or []))
                self.observe(rows, self.started - min(p.enqueued for p in self.running),
                             time.perf_counter() - self.started)
        except BaseException as exc:
            log.error("finishing a batch failed; failing every waiting request", exc_info=exc)
            self.fail_waiting(InternalError("inference failed"))
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise  # the process is meant to end: out of the event loop, as from any of its callbacks
        self.running = []
        self.dispatch()

    def fail_running(self, error: BaseException) -> None:
        """Fail the running batch's requests with ``error``; the inference thread is free."""
        for pending in self.running:
            if not pending.future.done():
                pending.future.set_exception(error)
        self.running = []

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

    def deliver(self, outputs: Outputs) -> int:
        """Each running request's slice of every output; the batch's rows."""
        offset = 0
        for pending in self.running:
            rows = len(pending.batch)
            if not pending.future.done():
                pending.future.set_result([out[offset : offset + rows] for out in outputs])
            offset += rows
        return offset

    def fail_waiting(self, exc: Exception) -> None:
        """Fail the running batch and everything queued, so no request waits for a batch that will not come."""
        self.running = [*self.running, *self.waiting]
        self.waiting.clear()
        self.queued_rows = 0
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None
        self.fail_running(exc)


class InferenceThread:
    """The one thread batches run on (ONNX Runtime parallelises inside a run). A batch goes in through a
    SimpleQueue and its outputs come back in one ``call_soon_threadsafe``: about half of what ``run_in_executor``
    costs the event loop per batch (a second future, its chaining callbacks and the executor's locks)."""

    def __init__(self, infer: Callable[[np.ndarray], Sequence[np.ndarray]]) -> None:
        self.infer = infer
        self.inbox: queue.SimpleQueue[tuple[Any, Finished, np.ndarray] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def run(self, batch: np.ndarray, finished: Finished) -> None:
        """Run ``batch``; ``finished(outputs, error)`` is called on this event loop when it has run."""
        if self.thread is None:  # started on first use: a --workers parent builds its app but never serves
            thread = threading.Thread(target=self.serve, name="vggexport-infer", daemon=True)
            thread.start()  # kept only once started: a thread that failed to start is tried again next batch
            self.thread = thread
        self.inbox.put((asyncio.get_running_loop(), finished, batch))

    def serve(self) -> None:
        while (item := self.inbox.get()) is not None:
            loop, finished, batch = item
            outputs, error = None, None
            try:
                outputs = list(self.infer(batch))
            except BaseException as exc:  # all of them, as an executor would: the batcher decides what is fatal
                error = exc
            try:
                loop.call_soon_threadsafe(finished, outputs, error)
            except RuntimeError:
                pass  # the loop has closed: no one is waiting for this batch any more

    def stop(self) -> None:
        """Wait for the batch running now, if any (as ``executor.shutdown(wait=True)`` did), then end the thread."""
        if self.thread is not None:
            self.inbox.put(None)
            self.thread.join()
            self.thread = None
