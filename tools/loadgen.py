"""Closed-loop KServe v2 clients (binary tensor extension), shared by the serving benchmarks.

    python tools/loadgen.py --url URL --inputs FILE --shape 1 1 32 32 [--clients 8] [--seconds 5] [--warmup 1]
                            [--client raw|aiohttp]

As a script it is one load-generator process: it reads raw FP32 inputs (one image after
another) from --inputs, prints "ready", waits for a start time on stdin (so several
processes share one timed window), then prints one JSON result: requests, errors,
latencies, its own CPU seconds, and every distinct answer per input (the caller checks
them all). `drive()` runs such processes; `closed_loop()` is the same client in-process.

The clients (tools/v2_http.py): `raw`, one keep-alive HTTP/1.1 connection per client on
asyncio streams (uvloop where installed), and aiohttp. aiohttp costs several times raw's CPU
per request, and the load generator shares the cores with the servers, so the peer
benchmark uses raw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by path (runpy), tools/ is not on it
from v2_http import Aiohttp, RawHttp, binary_request  # noqa: E402


@dataclass
class Round:
    """One timed window of closed-loop load, possibly from several processes."""

    requests: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    cpu_s: float = 0.0  # the client processes' own CPU (user + system) inside the window
    latencies: list[float] = field(default_factory=list)
    answers: dict[int, set[bytes]] = field(default_factory=dict)  # input index -> distinct binary outputs
    headers: set[bytes] = field(default_factory=set)  # distinct JSON headers of the answers
    processes: int = 1
    probes: list[Any] = field(default_factory=list, compare=False)  # drive()'s samples at the window's ends

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def latency_ms(self) -> tuple[float, float]:
        """p50 and p99 in ms, the one way every serving benchmark cuts them (NaN with fewer than two)."""
        if len(self.latencies) < 2:
            return float("nan"), float("nan")
        cuts = statistics.quantiles(self.latencies, n=100)
        return cuts[49] * 1e3, cuts[98] * 1e3

    def merge(self, other: Round) -> None:
        """Add another process's result of the same window."""
        self.requests += other.requests
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.seconds = max(self.seconds, other.seconds)
        self.cpu_s += other.cpu_s
        self.latencies += other.latencies
        for index, outputs in other.answers.items():
            self.answers.setdefault(index, set()).update(outputs)
        self.headers |= other.headers
        self.processes += other.processes

    def to_json(self) -> str:
        return json.dumps({"requests": self.requests, "errors": self.errors, "first_error": self.first_error,
                           "seconds": self.seconds, "cpu_s": self.cpu_s, "latencies": self.latencies,
                           "answers": {str(i): [a.hex() for a in sorted(o)] for i, o in self.answers.items()},
                           "headers": [h.decode() for h in sorted(self.headers)]})

    @classmethod
    def from_json(cls, text: str) -> Round:
        data = json.loads(text)
        answers = {int(i): {bytes.fromhex(a) for a in o} for i, o in data.pop("answers").items()}
        headers = {h.encode() for h in data.pop("headers")}
        return cls(**data, answers=answers, headers=headers)


async def closed_loop(url: str, clients: int, seconds: float, bodies: list[bytes], headers: dict[str, str], *,
                      warmup: float = 0.0, start_at: float | None = None, client: str = "raw") -> Round:
    """`clients` connections, each sending its next request when the last answer arrived.

    Only requests that complete inside [start + warmup, start + warmup + seconds] count; worker k
    sends bodies k, k + clients, ... so every input is asked for. start_at is a time.time() value.
    """
    if client == "aiohttp":
        import aiohttp  # before the clock starts: its first import takes a good part of a second

    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    begin = time.perf_counter() + warmup
    end = begin + seconds
    result = Round(seconds=seconds)

    async def measure_cpu() -> None:
        await asyncio.sleep(max(0.0, begin - time.perf_counter()))
        cpu = time.process_time()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        result.cpu_s = time.process_time() - cpu

    async def worker(k: int, connection: RawHttp | Aiohttp) -> None:
        index = k % len(bodies)
        while (sent := time.perf_counter()) < end:
            try:
                status, size, body = await connection.post(index)
                ok = status == 200 and size is not None
            # Any failure is counted and reported (the benchmark then exits 1): the round goes on.
            except Exception as exc:  # noqa: BLE001
                status, size, body, ok = 0, None, repr(exc).encode(), False
            done = time.perf_counter()
            if begin <= done <= end:
                record(result, index, body, size, ok, done - sent)
            index = (index + clients) % len(bodies)
        await connection.close()

    if client == "raw":
        await asyncio.gather(measure_cpu(), *(worker(k, RawHttp(url, bodies, headers)) for k in range(clients)))
        return result
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        shared = Aiohttp(session, url, bodies, headers)
        await asyncio.gather(measure_cpu(), *(worker(k, shared) for k in range(clients)))
    return result


def record(result: Round, index: int, body: bytes, size: str | None, ok: bool, latency: float) -> None:
    """Keep the answer's distinct bytes (checked after the window, off the clock) and its latency."""
    if not ok:
        result.errors += 1
        result.first_error = result.first_error or body[:300].decode(errors="replace")
        return
    split = int(size or 0)
    result.requests += 1
    result.latencies.append(latency)
    result.headers.add(body[:split])
    result.answers.setdefault(index, set()).add(body[split:])


def drive(url: str, inputs: Path, shape: list[int], *, clients: int, seconds: float, warmup: float,
          processes: int = 1, names: tuple[str, str] = ("input", "logits"), client: str = "raw",
          probe: Callable[[], Any] | None = None) -> Round:
    """One round from `processes` load-generator processes (clients split between them), one shared window.

    probe (the servers' CPU, say) is called as the timed window opens and as it closes; the two
    values land in the result's probes, so what they measure spans exactly the window.
    """
    split = [share for p in range(processes) if (share := clients // processes + (p < clients % processes))]
    children: list[subprocess.Popen] = []
    timers: list[threading.Timer] = []
    folder = tempfile.TemporaryDirectory(prefix="loadgen-")
    try:
        for n, share in enumerate(split):
            # The result goes to a file, not the stdout pipe: once, on a loaded machine, a result of more than
            # 64 KiB arrived broken at byte 65,536 through the pipe (not reproduced since); a file is read whole.
            options = {"url": url, "inputs": inputs, "clients": share, "seconds": seconds, "warmup": warmup,
                       "input-name": names[0], "output-name": names[1], "client": client,
                       "result": f"{folder.name}/{n}.json"}
            command = [sys.executable, __file__, *(f"--{k}={v}" for k, v in options.items()),
                       "--shape", *map(str, shape)]
            children.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for child in children:  # every process has its imports and bodies ready before the clock starts
            if child.stdout is None or child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"load generator {child.args} did not start (exit code {child.wait()})")
        start = time.time() + 0.05
        for child in children:  # all told first: one shared window
            if child.stdin is not None:
                child.stdin.write(f"{start}\n")
                child.stdin.flush()  # communicate() closes it
        result = Round(processes=0)
        if probe is not None:
            timers = start_probes(result, probe, [start + warmup, start + warmup + seconds])
        for n, child in enumerate(children):
            child.communicate(timeout=seconds + warmup + 120)
            if child.returncode:
                raise RuntimeError(f"load generator exited with {child.returncode}")
            result.merge(Round.from_json(Path(f"{folder.name}/{n}.json").read_text()))
        for timer in timers:
            timer.join()
        return result
    finally:
        for timer in timers:
            timer.cancel()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        folder.cleanup()


def start_probes(result: Round, probe: Callable[[], Any], times: list[float]) -> list[threading.Timer]:
    """probe() into result.probes at each time.time() value of times, from timer threads."""
    timers = [threading.Timer(at - time.time(), lambda: result.probes.append(probe())) for at in times]
    for timer in timers:
        timer.start()
    return timers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="The model's infer URL, .../v2/models/<name>/infer.")
    parser.add_argument("--inputs", type=Path, required=True, help="Raw FP32 inputs, one after another.")
    parser.add_argument("--shape", type=int, nargs="+", required=True, help="One request's shape, e.g. 1 1 32 32.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="The timed window.")
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds of load before the window.")
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--output-name", default="logits")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw")
    parser.add_argument("--result", type=Path, default=None, help="Write the JSON result there [default: stdout].")
    args = parser.parse_args()
    try:
        from uvloop import run  # a cheaper event loop: less client CPU taken from the cores the servers use
    except ImportError:
        from asyncio import run
    data = args.inputs.read_bytes()
    size = 4
    for dim in args.shape:
        size *= dim
    bodies = [binary_request(data[i:i + size], args.shape, input_name=args.input_name,
                             output_name=args.output_name) for i in range(0, len(data), size)]
    if args.client == "aiohttp":
        import aiohttp  # noqa: F401  imported before "ready", so not inside the shared window
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    result = run(closed_loop(args.url, args.clients, args.seconds, [b for b, _ in bodies], bodies[0][1],
                     warmup=args.warmup, start_at=start_at, client=args.client))
    if args.result is None:
        print(result.to_json(), flush=True)
    else:
        args.result.write_text(result.to_json())


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group: the benchmark says so, not every client
        sys.exit(130)
