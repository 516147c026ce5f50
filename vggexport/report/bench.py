"""A short latency and throughput measurement of every runtime the model folder has, at batch 1 and 64.

Every runtime goes through the same runner contract as verify and the server (vggexport.backend.registry), for
about ``seconds`` each. It is a glance, not a benchmark: tools/bench_infer.py is the careful one.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggexport.checkpoint import Checkpoint
from vggexport.errors import VggExportError, first_line
from vggexport.report.figures import throughput_figure
from vggexport.report.html import Section, esc, figure, note, table
from vggexport.backend.base import Runner

BATCHES = (1, 64)


@dataclass(frozen=True)
class Timing:
    runtime: str
    file: str
    provider: str
    batch: int
    median_ms: float | None = None
    p90_ms: float | None = None
    runs: int = 0
    error: str | None = None

    @property
    def images_per_second(self) -> float | None:
        return self.batch / (self.median_ms / 1000) if self.median_ms else None


Candidate = tuple[str, str, Callable[[], Runner]]


def candidates(folder: Path, ckpt: Checkpoint, cuda: bool) -> list[Candidate]:
    """(runtime, file, make runner) for each runtime that can run something in ``folder``, by device.

    PyTorch eager runs the checkpoint; every file runtime comes from ``make_runner``, the one runtime table.
    """
    from vggexport.backend.pytorch import TorchRunner
    from vggexport.backend.registry import ARTIFACT_KINDS, artifact_kind, make_runner, runtimes_for

    order = ("torchscript", "torch-export", "onnx")
    kinds = {path: artifact_kind(path) for path in folder.iterdir() if path.is_file()}
    files = sorted((p for p, kind in kinds.items() if kind in ARTIFACT_KINDS),
                   key=lambda p: (order.index(str(kinds[p])), p.name))
    found: list[Candidate] = []
    for device in ["cpu", "cuda"] if cuda else ["cpu"]:
        on_cuda = device == "cuda"
        found.append(("pytorch-cuda" if on_cuda else "pytorch", ckpt.path.name,
                      lambda d=device: TorchRunner(ckpt.build_model("cpu"), device=d)))
        for path in files:
            for runtime in runtimes_for(str(kinds[path]), cuda=cuda):
                if runtime.endswith("-cuda") == on_cuda:
                    found.append((runtime, path.name, lambda r=runtime, p=path: make_runner(r, p)))
    return found


def example_batch(runner: Runner, shape: tuple[int, int, int], batch: int) -> np.ndarray:
    """Random normalised input; uint8 pixels for a model that preprocesses inside (the .preprocessing.onnx)."""
    rng = np.random.default_rng(0)
    session = getattr(runner, "session", None)
    if session is not None and session.get_inputs()[0].type == "tensor(uint8)":
        return rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    return rng.standard_normal((batch, *shape), dtype=np.float32)


def time_calls(runner: Runner, batch: np.ndarray, seconds: float, max_runs: int = 500) -> list[float]:
    for _ in range(3):  # warm-up: allocations, ORT's first run, TorchScript's profiling runs
        runner.infer(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < max_runs):
        started = time.perf_counter()
        runner.infer(batch)
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_candidate(candidate: Candidate, shape: tuple[int, int, int], seconds: float) -> list[Timing]:
    runtime, file, make = candidate
    try:
        with make() as runner:
            provider = runner.provider
            timings = []
            for batch in BATCHES:
                times = sorted(time_calls(runner, example_batch(runner, shape, batch), seconds / len(BATCHES)))
                p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
                timings.append(Timing(runtime, file, provider, batch, statistics.median(times), p90, len(times)))
            return timings
    except (VggExportError, RuntimeError, ValueError, OSError) as exc:
        message = first_line(exc)
        return [Timing(runtime, file, "", batch, error=message) for batch in BATCHES]


def measure(folder: Path, ckpt: Checkpoint, seconds: float = 1.0) -> list[Timing]:
    import torch

    config = ckpt.model_config
    shape = (config.in_channels, config.image_size, config.image_size)
    found = candidates(folder, ckpt, cuda=torch.cuda.is_available())
    return [timing for candidate in found for timing in measure_candidate(candidate, shape, seconds)]


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} usable cores, {platform.platform()}"


def speed_section(timings: list[Timing] | None, seconds: float) -> Section:
    title = "Latency and throughput"
    if timings is None:
        return Section("speed", title, note("Not measured (--no-bench). Run `vggexport report` without it to "
                                            "time every runtime at batch 1 and 64."))
    rows = []
    for t in timings:
        if t.error:
            rows.append((t.runtime, t.file, t.provider, t.batch, "", "", "", f"error: {t.error}"))
        else:
            rows.append((t.runtime, t.file, t.provider, t.batch, f"{t.median_ms:.2f}", f"{t.p90_ms:.2f}",
                         f"{t.images_per_second:,.0f}", f"{t.runs} runs"))
    best = [t for t in timings if t.batch == BATCHES[-1] and t.images_per_second]
    chart = figure(throughput_figure([f"{t.runtime} ({t.file})" for t in best],
                                     [t.images_per_second or 0.0 for t in best], BATCHES[-1]),
                   "throughput per runtime", f"batch {BATCHES[-1]}, random inputs") if best else ""
    body = (f'<p>About {seconds:g} s per runtime on {esc(machine_line())}, measured when this report was made. '
            "Short and on a shared machine: read the ratios, not the digits; tools/bench_infer.py measures "
            "carefully.</p>"
            + chart + table(["runtime", "file", "provider", "batch", "median ms", "p90 ms", "images/s", "runs"],
                            rows, numeric=[3, 4, 5, 6]))
    return Section("speed", title, body)
