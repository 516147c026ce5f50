"""Serving start-up, memory, throughput and latency on loopback, batching on and off, against the raw session.

    python tools/bench_serve.py [--model artifacts/vgg11_bn/model.onnx] [--seconds 8] [--provider cpu|cuda|auto]
                                [--clients 1 8 64] [--logs DIR] [--startup-only]

Starts `vggexport serve` on 127.0.0.1 twice (--max-batch-size 64, then 1), with its
output written to a file under --logs (never an unread pipe, which a chatty server
could fill and block on). Reports seconds from launch to ready and the server's RSS,
drives it with closed-loop single-image clients (binary tensor protocol), then
measures the bare ONNX Runtime session (the server's own runner: same provider,
same IO binding) at batch 64 in the same run, and prints the ratios the serve issue asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

import peer_servers
import rounds
from loadgen import closed_loop
from v2_http import binary_request

from vggexport.names import PROVIDERS
from vggexport.serve.runner import ServingRunner
from vggexport.serve.smoke import free_port


def start_server(model: Path, logs: Path, name: str, provider: str, *extra: str) -> peer_servers.ServerProcess:
    """`vggexport serve` on a free port (gRPC off), its output in ``logs/<name>.log``; in this tool's process
    group, where the GPU run's runner, ending an overdue step, signals it too."""
    return peer_servers.start_vggexport(model, logs, free_port(), 0, name=name, provider=provider, extra=extra,
                                        new_session=False)


def ensure_model(model: Path | None, folder: Path) -> Path:
    if model is not None:
        return model
    subprocess.run([sys.executable, "-m", "vggexport", "train", "--dataset", "synthetic", "--max-steps", "1",
                    "--artifacts", str(folder)], check=True, capture_output=True)
    for step in ("onnx", "verify"):  # verified: serve refuses a model parity.json has not passed
        subprocess.run([sys.executable, "-m", "vggexport", step, "--artifacts", str(folder)], check=True,
                       capture_output=True)
    return folder / "vgg11_bn" / "model.onnx"


def raw_session(model: Path, provider: str, batch: int, seconds: float) -> tuple[str, float, float]:
    """(the execution provider it ran on, img/s, this process's CPU seconds per image while it ran)."""
    with ServingRunner(model, provider=provider) as runner:
        shape = [d if d > 0 else 1 for d in runner.input_shape[1:]]
        x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
        runner.infer_all(x)
        count, started, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            runner.infer_all(x)
            count += batch
        return runner.provider, count / (time.perf_counter() - started), (time.process_time() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="--max-queue-delay-ms of the batching server.")
    parser.add_argument("--provider", choices=PROVIDERS, default="cpu",
                        help="The server's --provider (auto: CUDA only where a GPU is) [default: cpu].")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--client", choices=("aiohttp", "raw"), default="aiohttp",
                        help="Closed-loop client in this process (tools/loadgen.py); raw costs less CPU per "
                             "request [default: aiohttp, what BENCHMARKS.md's serving numbers used].")
    parser.add_argument("--logs", type=Path, default=None, help="Folder for the servers' output [default: a temp dir].")
    parser.add_argument("--startup-only", action="store_true", help="Only time start-up and measure RSS (5 starts).")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args()
    rounds.exit_on_sigterm()  # through the finally that stops the server
    with tempfile.TemporaryDirectory() as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        model = ensure_model(args.model, Path(tmp))
        if args.startup_only:
            startup(model, args.provider, logs, args.ready_timeout)
            return
        with ServingRunner(model, provider="cpu") as runner:
            name = runner.metadata["model_name"]
            shape = [d if d > 0 else 1 for d in runner.input_shape[1:]]
        image = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)
        body, headers = binary_request(image.tobytes(), list(image.shape))
        results: dict[tuple[str, int], float] = {}
        for mode, max_batch in (("batching", "64"), ("no batching", "1")):
            server = start_server(model, logs, f"server-{max_batch}", args.provider, "--max-batch-size", max_batch,
                                  "--max-queue-delay-ms", str(args.delay_ms), "--max-queue-size", "4096")
            try:
                ready = server.wait_ready(args.ready_timeout)
                print(f"{mode}: ready in {ready:.2f} s, RSS {server.rss_mb():.0f} MB", flush=True)
                for clients in args.clients:
                    url = f"{server.url}/v2/models/{name}/infer"
                    # 1 s of warm-up, then the timed window (tools/loadgen.py)
                    result = asyncio.run(closed_loop(url, clients, args.seconds, [body], headers, warmup=1.0,
                                                     client=args.client))
                    if result.errors:
                        raise RuntimeError(f"{result.errors} requests failed, first: {result.first_error}")
                    rate, (p50, p99) = result.rate, result.latency_ms()
                    results[(mode, clients)] = rate
                    print(f"{mode:<12} {clients:>3} clients: {rate:8.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms",
                          flush=True)
                print(f"{mode}: RSS after load {server.rss_mb():.0f} MB", flush=True)
            finally:
                server.stop()
        ran_on, raw, _ = raw_session(model, args.provider, 64, args.seconds)
    top = max(args.clients)
    print(f"raw ONNX Runtime session ({args.provider}: {ran_on}), batch 64: {raw:.0f} img/s")
    print(f"{top} clients: batching / no batching = {results[('batching', top)] / results[('no batching', top)]:.2f}x; "
          f"batching / raw session = {results[('batching', top)] / raw:.0%}")


def startup(model: Path, provider: str, logs: Path, timeout: float) -> None:
    times, rss = [], []
    for attempt in range(5):
        server = start_server(model, logs, f"startup-{attempt}", provider)
        try:
            times.append(server.wait_ready(timeout))
            rss.append(server.rss_mb())
            maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        finally:
            server.stop()
    has_cuda = any(name in maps for name in ("libcudart", "libcublas", "libcudnn", "libonnxruntime_providers_cuda"))
    print(f"ready in {statistics.median(times):.2f} s (median of 5, launch to 200 on /v2/health/ready; "
          f"min {min(times):.2f}), RSS {statistics.median(rss):.0f} MB, torch loaded: {'libtorch' in maps}, "
          f"CUDA loaded: {has_cuda}")


if __name__ == "__main__":
    main()
