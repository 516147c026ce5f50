"""Dynamic batching (Triton's dynamic batcher is the model), bounded and fail-safe.

Requests wait in one queue. Whenever one of the ``instances`` (vggexport/serve/instance.py)
is free, the queue's head becomes a batch of as many requests as fit in
``max_batch_size`` rows, once the batch is full, the next request cannot join it,
or its first request has waited ``max_queue_delay_ms`` (counted from its arrival,
as Triton counts it). The batch runs off the event loop, on that instance's thread,
and each request gets its slice of every output. Requests
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
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from vggexport.serve.errors import DeadlineError, InternalError, UnavailableError
from vggexport.serve.instance import ModelInstance, Outputs, Pending

log = logging.getLogger("vggexport.serve")
BatchObserver = Callable[[int, float, float], None]  # (batch rows, queue seconds, compute seconds)


class DynamicBatcher:
    def __init__(self, infer: Callable[[np.ndarray], Sequence[np.ndarray]], *, max_batch_size: int = 64,
                 max_queue_delay_ms: float = 0.0, max_queue_size: int | None = None, timeout_ms: float = 0.0,
                 instances: int = 1, observe: BatchObserver | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if instances < 1:
            raise ValueError("instances must be >= 1")
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
        self.instances = [ModelInstance(infer, max_batch_size, f"vggexport-infer-{i}") for i in range(instances)]
        self.busy = 0  # the instances running a batch now
        self.delay_timer: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed

    def start(self) -> None:
        """Nothing to start (an instance's thread starts with its first batch); refused once stopped."""
        if self.closed:
            raise UnavailableError("the server is shutting down")

    async def stop(self) -> None:
        self.closed = True
        self.fail_waiting(UnavailableError("the server is shutting down"))
        self.stop_instances()

    def stop_instances(self) -> None:
        for instance in self.instances:
            instance.stop()

    def warm_up(self, batch: np.ndarray) -> None:
        """Run ``batch`` once on every instance's own thread, before serving (no event loop needed); raises what
        a run raises. Each thread's first run is the one that pays CUDA's per-thread set-up."""
        self.start()  # refused once stopped: no thread nothing would stop again
        for instance in self.instances:
            instance.run_here(batch)

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
        if self.busy < len(self.instances):
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
        """Hand due batches to free instances (on the event loop), as many as are free and due.
        A loop, not a recursion through ``finished``: a long run of batches that fail to start cannot overflow
        the stack."""
        while self.busy < len(self.instances) and not self.closed:
            group = self.due_group(delay_over)
            if not group:
                return
            if self.delay_timer is not None:
                self.delay_timer.cancel()
                self.delay_timer = None
            instance = next(i for i in self.instances if not i.busy)
            self.busy += 1
            try:
                instance.start(group, self.finished)
            except Exception as exc:  # rows numpy cannot join (MemoryError), say: this batch fails, not the next
                fail(group, exc)
                self.release(instance)

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

    def finished(self, instance: ModelInstance, outputs: Outputs | None, error: BaseException | None) -> None:
        """A batch's end (on the event loop): answer its requests, then start the next batch."""
        if self.closed:
            return  # stop() has failed the batch's requests already
        try:
            if error is not None and not isinstance(error, Exception):
                raise error  # what no batch may raise: handled below, as a failure of the batcher itself
            if error is not None:  # the batch failed: its requests learn it, the batcher goes on
                fail(instance.running, error)
            else:
                rows = instance.deliver(outputs or [])
                self.observe(rows, instance.started - min(p.enqueued for p in instance.running),
                             time.perf_counter() - instance.started)
        except BaseException as exc:
            log.error("finishing a batch failed; failing every waiting request", exc_info=exc)
            self.fail_waiting(InternalError("inference failed"))
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise  # the process is meant to end: out of the event loop, as from any of its callbacks
        finally:
            self.release(instance)
        self.dispatch()

    def release(self, instance: ModelInstance) -> None:
        instance.release()
        self.busy -= 1

    def fail_waiting(self, exc: Exception) -> None:
        """Fail every running batch and everything queued, so no request waits for a batch that will not come.
        The instances stay busy until their runs return: their buffers are in use until then."""
        for instance in self.instances:
            fail(instance.running, exc)
        fail(self.waiting, exc)
        self.waiting.clear()
        self.queued_rows = 0
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None


def fail(requests: Iterable[Pending], error: BaseException) -> None:
    """The one place requests fail: each one not answered yet gets ``error``."""
    for pending in requests:
        if not pending.future.done():
            pending.future.set_exception(error)
