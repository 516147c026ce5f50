"""The HTTP layer under `vggexport serve`: uvicorn (what it runs) against granian, the same app, side by side.

    python tools/bench_http_layers.py [--model artifacts/vgg11_bn/model.onnx] [--seconds 4] [--rounds 3]
                                      [--clients 1 8 64]

Both servers run the one app factory `vggexport serve --workers N` workers run
(`vggexport.serve.app:app_from_environment`), the same config (CPU, its batching
defaults), one process each: uvicorn as `vggexport serve` starts it (httptools and
uvloop), granian (Rust HTTP/1.1, `--interface asgi`, one worker) from this interpreter.
Rounds alternate between them; `tools/loadgen.py`'s raw HTTP/1.1 client drives each,
every answer is checked against offline ONNX Runtime, and the median round's (by req/s)
req/s, p99, server CPU per request and the ratio granian / uvicorn are printed. granian is not a
dependency: `pip install granian` first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

import bench_peers  # noqa: E402
import loadgen  # noqa: E402
import peer_servers  # noqa: E402

LAYERS = ("uvicorn", "granian")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/vgg11_bn/model.onnx"))
    parser.add_argument("--seconds", type=float, default=4.0, help="Timed window of one round [default: 4].")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per server and client count [default: 3].")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    return parser.parse_args()


def start(model: Path, logs: Path) -> dict[str, peer_servers.ServerProcess]:
    from vggexport.serve.app import CONFIG_ENV
    from vggexport.serve.smoke import free_port

    servers = {"uvicorn": peer_servers.start_vggexport(model, logs, free_port(), 0)}
    port = free_port()
    config = {"config": {"model": str(model.resolve()), "provider": "cpu"},
              "listen": {"host": "127.0.0.1", "grpc_port": 0}}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", CONFIG_ENV: json.dumps(config),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]])}
    servers["granian"] = peer_servers.ServerProcess(
        "granian", [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                    "vggexport.serve.app:app_from_environment", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1", "--log-level", "warning"], port, logs / "granian.log", env)
    return servers


def main() -> int:
    args = parse_args()
    if importlib.util.find_spec("granian") is None:
        print("error: granian is not installed here (pip install granian); it is not a vggexport dependency",
              file=sys.stderr)
        return 2
    import numpy as np

    io = bench_peers.model_io(args.model)
    images = np.random.default_rng(0).standard_normal((64, *io["input"][1])).astype(np.float32)
    expected = bench_peers.offline_answers(args.model, images)
    logs = Path(tempfile.mkdtemp(prefix="bench-http-layers-"))
    inputs = logs / "inputs.raw"
    inputs.write_bytes(images.tobytes())
    print(f"CPU flags: {bench_peers.cpu_flags()}; {os.cpu_count()} cores; logs in {logs}", flush=True)
    servers = start(args.model, logs)
    problems: list[str] = []
    try:
        for server in servers.values():
            server.wait_ready(120)
        for clients in args.clients:
            rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in LAYERS}
            for round_no in range(1, args.rounds + 1):
                for name in LAYERS:
                    server = servers[name]
                    result = loadgen.drive(f"{server.url}/v2/models/{io['name']}/infer", inputs,
                                           [1, *io["input"][1]], clients=clients, seconds=args.seconds, warmup=1.0,
                                           names=(io["input"][0], io["output"][0]), probe=server.cpu_seconds)
                    _, wrong = bench_peers.check_answers(result, expected, io)
                    problems += [f"{name}, {clients} clients, round {round_no}: {p}" for p in wrong[:5]]
                    cpu_us = (result.probes[1] - result.probes[0]) / max(1, result.requests) * 1e6
                    p99 = result.latency_ms()[1]
                    rows[name].append((result.rate, p99, cpu_us))
                    print(f"  {clients:>3} clients  round {round_no}  {name:<8} {rows[name][-1][0]:7.0f} req/s  "
                          f"p99 {p99:6.2f} ms  server {cpu_us:5.0f} us/req  answers {result.requests} "
                          + ("ok" if not wrong else f"{len(wrong)} WRONG"), flush=True)
            median = {name: sorted(rows[name])[len(rows[name]) // 2] for name in LAYERS}
            print(f"{clients:>3} clients, median round: granian / uvicorn "
                  f"{median['granian'][0] / median['uvicorn'][0]:.2f}x req/s "
                  f"({median['granian'][0]:.0f} / {median['uvicorn'][0]:.0f}), p99 {median['granian'][1]:.2f} / "
                  f"{median['uvicorn'][1]:.2f} ms, server CPU {median['granian'][2]:.0f} / {median['uvicorn'][2]:.0f} "
                  "us a request", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    for problem in problems:
        print(f"WRONG: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
