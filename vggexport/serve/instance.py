"""The batcher's model instances (Triton's instance group): where a batch runs, and what it runs from.

Each instance is a thread of its own with the batch it runs now and the buffer that
batch was merged into. All instances call the one session's ``run`` (thread-safe in
ONNX Runtime, and one copy of the weights): with N instances, N batches run at once,
each on the intra-op threads it was given, which is how Triton's instance groups keep
a CPU or a GPU busy while the next batch is merged and the last one answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

Outputs = list[np.ndarray]
MAX_BUFFER_BYTES = 64 * 1024 * 1024  # the largest batch buffer an instance keeps between batches


class Pending:
    """A request in the batcher: its rows, the future its answer goes to, and when it arrived."""

    __slots__ = ("batch", "future", "enqueued")

    def __init__(self, batch: np.ndarray, future: asyncio.Future[Outputs]) -> None:
        self.batch, self.future, self.enqueued = batch, future, time.perf_counter()

    def fits_with(self, other: Pending) -> bool:
        return self.batch.shape[1:] == other.batch.shape[1:] and self.batch.dtype == other.batch.dtype


Finished = Callable[["ModelInstance", "Outputs | None", "BaseException | None"], None]
Reply = Callable[["Outputs | None", "BaseException | None"], None]  # called on the instance's thread


class ModelInstance:
    """One instance: a batch goes in through a SimpleQueue and its outputs come back in one
    ``call_soon_threadsafe``, about half of what ``run_in_executor`` costs the event loop per batch (a second
    future, its chaining callbacks and the executor's locks)."""

    def __init__(self, infer: Callable[[np.ndarray], Sequence[np.ndarray]], max_batch_size: int,
                 name: str = "vggexport-infer") -> None:
        self.infer, self.max_batch_size, self.name = infer, max_batch_size, name
        self.running: list[Pending] = []  # the batch on this instance now
        self.busy = False  # from the hand-off until the batcher has finished with its answer
        self.started = 0.0  # when that batch was handed over
        # merge()'s buffer: ONNX Runtime reads it only during this instance's run, and this instance's next batch
        # is merged only after that run has returned.
        self.buffer: np.ndarray | None = None
        self.buffer_key: tuple[tuple[int, ...], np.dtype] | None = None
        self.inbox: queue.SimpleQueue[tuple[Reply, np.ndarray] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def start(self, group: list[Pending], finished: Finished) -> None:
        """Run ``group`` as one batch; ``finished(self, outputs, error)`` is called on this event loop after.
        Raises (the batch never reached the thread) when its rows cannot be merged or the thread cannot start."""
        self.running, self.busy, self.started = group, True, time.perf_counter()
        batch = self.merge()
        loop = asyncio.get_running_loop()
        self.hand_over(lambda outputs, error: self.post(loop, finished, outputs, error), batch)

    def run_here(self, batch: np.ndarray) -> Outputs:
        """Run ``batch`` on this instance's thread and wait for its outputs, with no event loop: the warm-up.
        On CUDA, ONNX Runtime makes a thread's cuDNN and cuBLAS handles on that thread's first run, so each
        instance's thread warms up, not the thread that builds the server."""
        done: concurrent.futures.Future[Outputs] = concurrent.futures.Future()

        def reply(outputs: Outputs | None, error: BaseException | None) -> None:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(outputs or [])

        self.hand_over(reply, batch)
        return done.result()

    def hand_over(self, reply: Reply, batch: np.ndarray) -> None:
        if self.thread is None or not self.thread.is_alive():  # on first use, and after a thread that died
            thread = threading.Thread(target=self.serve, name=self.name, daemon=True)
            thread.start()  # kept only once started: a thread that failed to start is tried again next batch
            self.thread = thread
        self.inbox.put((reply, batch))

    def post(self, loop: asyncio.AbstractEventLoop, finished: Finished, outputs: Outputs | None,
             error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(finished, self, outputs, error)
        except RuntimeError:
            pass  # the loop has closed: no one is waiting for this batch any more

    def release(self) -> None:
        """The batcher is done with this instance's batch: it may take the next one."""
        self.running, self.busy = [], False

    def merge(self) -> np.ndarray:
        """The running requests' rows as one batch: a request's own array when it is alone (no copy), else
        one copy of each into a buffer kept from batch to batch while the row shape stays the same."""
        if len(self.running) == 1:
            return self.running[0].batch
        first = self.running[0].batch
        rows = sum(len(p.batch) for p in self.running)
        key = (first.shape[1:], first.dtype)
        if self.buffer is None or self.buffer_key != key:
            size = self.max_batch_size * first[:1].nbytes
            self.buffer = None  # a failed allocation below must not leave the old buffer under the new key
            self.buffer = np.empty((self.max_batch_size, *key[0]), key[1]) if size <= MAX_BUFFER_BYTES else None
            self.buffer_key = key
        if self.buffer is None:  # rows too large to keep a whole batch of them around
            return np.concatenate([p.batch for p in self.running])
        return np.concatenate([p.batch for p in self.running], out=self.buffer[:rows])

    def deliver(self, outputs: Outputs) -> int:
        """Each running request's slice of every output; the batch's rows. Outputs that are views of the buffer
        (an identity graph's, say) are copied first: the next batch is merged into it before the requests that
        get these slices have answered."""
        if self.buffer is not None:
            outputs = [out.copy() if np.may_share_memory(out, self.buffer) else out for out in outputs]
        offset = 0
        for pending in self.running:
            rows = len(pending.batch)
            if not pending.future.done():
                pending.future.set_result([out[offset : offset + rows] for out in outputs])
            offset += rows
        return offset

    def serve(self) -> None:
        while (item := self.inbox.get()) is not None:
            reply, batch = item
            outputs, error = None, None
            try:
                outputs = list(self.infer(batch))
            except BaseException as exc:  # all of them, as an executor would: the batcher decides what is fatal
                error = exc
            reply(outputs, error)

    def stop(self) -> None:
        """Wait for the batch running now, if any (as ``executor.shutdown(wait=True)`` did), then end the thread."""
        if self.thread is not None:
            self.inbox.put(None)
            self.thread.join()
            self.thread = None
