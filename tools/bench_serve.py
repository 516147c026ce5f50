"""Serving throughput and latency on loopback, batching on and off, against the raw ORT session.

    python tools/bench_serve.py [--model artifacts/vgg11_bn/model.onnx] [--seconds 8]

Starts `vggexport serve` on 127.0.0.1 twice (--max-batch-size 64, then 1), drives
it with 1, 8 and 64 concurrent single-image clients (binary tensor protocol,
bounded in time and count), then measures the bare ONNX Runtime session at
batch 64 in the same run, and prints the ratios the serve issue asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402  (the same real-server launcher the tests use)
from vggexport.runners import OnnxRuntimeRunner  # noqa: E402

MAX_REQUESTS = 20_000


def binary_request(image: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "shape": list(image.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": image.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header + image.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                      "content-type": "application/octet-stream"}


async def load(url: str, clients: int, seconds: float, body: bytes, headers: dict[str, str]) -> tuple[float, list[float]]:
    """Closed-loop clients on aiohttp (far cheaper per request than httpx, so the server is what is measured)."""
    import aiohttp

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline and len(latencies) < MAX_REQUESTS:
                started = time.perf_counter()
                async with client.post(url, data=body, headers=headers) as response:
                    response.raise_for_status()
                    await response.read()
                latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def ensure_model(model: Path | None, folder: Path) -> Path:
    if model is not None:
        return model
    subprocess.run([sys.executable, "-m", "vggexport", "train", "--dataset", "synthetic", "--max-steps", "1",
                    "--artifacts", str(folder)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "vggexport", "onnx", "--artifacts", str(folder)], check=True,
                   capture_output=True)
    return folder / "vgg11_bn" / "model.onnx"


def raw_session(model: Path, batch: int, seconds: float) -> float:
    with OnnxRuntimeRunner(model, provider="cpu") as runner:
        x = np.random.default_rng(0).standard_normal((batch, *runner.session.get_inputs()[0].shape[1:]),
                                                     dtype=np.float32)
        runner.infer(x)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            runner.infer(x)
            count += batch
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="--max-queue-delay-ms of the batching server.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = ensure_model(args.model, Path(tmp))
        with OnnxRuntimeRunner(model) as runner:
            name, shape = runner.metadata["model_name"], runner.session.get_inputs()[0].shape[1:]
        body, headers = binary_request(np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32))
        results: dict[tuple[str, int], float] = {}
        for mode, max_batch in (("batching", "64"), ("no batching", "1")):
            server = ServerProcess(model, "--provider", "cpu", "--max-batch-size", max_batch,
                                   "--max-queue-delay-ms", str(args.delay_ms)).wait_ready()
            try:
                for clients in (1, 8, 64):
                    url = f"{server.url}/v2/models/{name}/infer"
                    asyncio.run(load(url, clients, 1.0, body, headers))  # warm-up
                    rate, latencies = asyncio.run(load(url, clients, args.seconds, body, headers))
                    p50, p99 = (statistics.quantiles(latencies, n=100)[i] * 1e3 for i in (49, 98))
                    results[(mode, clients)] = rate
                    print(f"{mode:<12} {clients:>3} clients: {rate:8.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms",
                          flush=True)
            finally:
                server.stop()
        raw = raw_session(model, 64, args.seconds)
    print(f"raw ONNX Runtime session, batch 64: {raw:.0f} img/s")
    print(f"64 clients: batching / no batching = {results[('batching', 64)] / results[('no batching', 64)]:.2f}x; "
          f"batching / raw session = {results[('batching', 64)] / raw:.0%}")


if __name__ == "__main__":
    main()
